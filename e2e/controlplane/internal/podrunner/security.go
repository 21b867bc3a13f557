package podrunner

import (
	"bufio"
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// identity is the user a container's process runs as.
type identity struct {
	UID, GID   int64
	Additional []int64
}

// effectiveSecurity merges the container's securityContext over the pod's
// (the container wins, field by field), as the kubelet does.
type effectiveSecurity struct {
	RunAsUser, RunAsGroup  *int64
	RunAsNonRoot           *bool
	ReadOnlyRootFilesystem bool
	NoNewPrivileges        bool
	Privileged             bool
	Capabilities           *corev1.Capabilities
	SupplementalGroups     []int64
	FSGroup                *int64
}

func mergeSecurity(psc *corev1.PodSecurityContext, sc *corev1.SecurityContext) effectiveSecurity {
	var e effectiveSecurity
	if psc != nil {
		e.RunAsUser, e.RunAsGroup, e.RunAsNonRoot = psc.RunAsUser, psc.RunAsGroup, psc.RunAsNonRoot
		e.SupplementalGroups = psc.SupplementalGroups
		e.FSGroup = psc.FSGroup
	}
	if sc != nil {
		if sc.RunAsUser != nil {
			e.RunAsUser = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			e.RunAsGroup = sc.RunAsGroup
		}
		if sc.RunAsNonRoot != nil {
			e.RunAsNonRoot = sc.RunAsNonRoot
		}
		e.ReadOnlyRootFilesystem = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
		e.NoNewPrivileges = sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
		e.Privileged = sc.Privileged != nil && *sc.Privileged
		e.Capabilities = sc.Capabilities
	}
	return e
}

// verifyNonRoot refuses to start a container whose user would be root
// under runAsNonRoot, with the kubelet's wording (the pod shows
// CreateContainerConfigError). imageUser is the image's configured user.
func verifyNonRoot(e effectiveSecurity, imageUser, pod, container string) error {
	if e.RunAsNonRoot == nil || !*e.RunAsNonRoot {
		return nil
	}
	if e.RunAsUser != nil {
		if *e.RunAsUser == 0 {
			return configErrorf("container's runAsUser breaks non-root policy (pod: %q, container: %s)", pod, container)
		}
		return nil
	}
	user, _, _ := strings.Cut(imageUser, ":")
	if user == "" {
		return configErrorf("container has runAsNonRoot and image will run as root (pod: %q, container: %s)", pod, container)
	}
	uid, err := strconv.ParseInt(user, 10, 64)
	if err != nil {
		return configErrorf("container has runAsNonRoot and image has non-numeric user (%s), cannot verify user is non-root (pod: %q, container: %s)", user, pod, container)
	}
	if uid == 0 {
		return configErrorf("container has runAsNonRoot and image will run as root (pod: %q, container: %s)", pod, container)
	}
	return nil
}

// resolveIdentity computes uid, gid and supplementary groups from the
// securityContext and the image's user ("", "uid", "uid:gid", "name",
// "name:group"); names are looked up in the image's /etc/passwd and
// /etc/group.
func resolveIdentity(e effectiveSecurity, imageUser string, passwd, group []byte) (identity, error) {
	var id identity
	user, grp, hasGroup := strings.Cut(imageUser, ":")
	imgUID, imgGID := int64(0), int64(-1)
	if user != "" {
		u, ok := lookupID(user, passwd, 2)
		if !ok {
			return id, configErrorf("image user %q not found in the image's /etc/passwd", user)
		}
		imgUID = u
	}
	if hasGroup && grp != "" {
		g, ok := lookupID(grp, group, 2)
		if !ok {
			return id, configErrorf("image group %q not found in the image's /etc/group", grp)
		}
		imgGID = g
	}
	id.UID = imgUID
	if e.RunAsUser != nil {
		id.UID = *e.RunAsUser
	}
	switch {
	case e.RunAsGroup != nil:
		id.GID = *e.RunAsGroup
	case e.RunAsUser == nil && imgGID >= 0:
		id.GID = imgGID
	default:
		// The user's primary group from the image's /etc/passwd, else 0.
		id.GID = primaryGroup(id.UID, passwd)
	}
	seen := map[int64]bool{}
	add := func(g int64) {
		if !seen[g] && g != id.GID {
			seen[g] = true
			id.Additional = append(id.Additional, g)
		}
	}
	for _, g := range e.SupplementalGroups {
		add(g)
	}
	if e.FSGroup != nil {
		add(*e.FSGroup)
	}
	sort.Slice(id.Additional, func(i, j int) bool { return id.Additional[i] < id.Additional[j] })
	return id, nil
}

// lookupID returns a numeric id, or the id of a name in a passwd/group
// file (field idField, 0-based).
func lookupID(s string, file []byte, idField int) (int64, bool) {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, true
	}
	sc := bufio.NewScanner(bytes.NewReader(file))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) > idField && f[0] == s {
			n, err := strconv.ParseInt(f[idField], 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

func primaryGroup(uid int64, passwd []byte) int64 {
	sc := bufio.NewScanner(bytes.NewReader(passwd))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) > 3 && f[2] == strconv.FormatInt(uid, 10) {
			if g, err := strconv.ParseInt(f[3], 10, 64); err == nil {
				return g
			}
		}
	}
	return 0
}

// defaultCapabilities is the set a container runtime (containerd, CRI-O)
// grants a non-privileged container by default.
var defaultCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// allCapabilities is every capability runc 1.1 knows (privileged).
var allCapabilities = []string{
	"CAP_AUDIT_CONTROL", "CAP_AUDIT_READ", "CAP_AUDIT_WRITE", "CAP_BLOCK_SUSPEND", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
	"CAP_FSETID", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_KILL", "CAP_LEASE", "CAP_LINUX_IMMUTABLE",
	"CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE", "CAP_MKNOD", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_RAW", "CAP_PERFMON", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
	"CAP_SETUID", "CAP_SYSLOG", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_CHROOT", "CAP_SYS_MODULE",
	"CAP_SYS_NICE", "CAP_SYS_PACCT", "CAP_SYS_PTRACE", "CAP_SYS_RAWIO", "CAP_SYS_RESOURCE",
	"CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_WAKE_ALARM",
}

// capabilitySet applies securityContext.capabilities (drop first, "ALL"
// allowed in both lists) to the default set.
func capabilitySet(e effectiveSecurity) []string {
	if e.Privileged {
		return append([]string(nil), allCapabilities...)
	}
	set := map[string]bool{}
	for _, c := range defaultCapabilities {
		set[c] = true
	}
	norm := func(c corev1.Capability) string {
		s := strings.ToUpper(string(c))
		if s == "ALL" {
			return s
		}
		if !strings.HasPrefix(s, "CAP_") {
			s = "CAP_" + s
		}
		return s
	}
	if c := e.Capabilities; c != nil {
		for _, d := range c.Drop {
			if n := norm(d); n == "ALL" {
				set = map[string]bool{}
			} else {
				delete(set, n)
			}
		}
		for _, a := range c.Add {
			if n := norm(a); n == "ALL" {
				for _, x := range allCapabilities {
					set[x] = true
				}
			} else {
				set[n] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for c := range set {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// describeIdentity is a short text for events and logs.
func describeIdentity(id identity) string {
	return fmt.Sprintf("uid=%d gid=%d groups=%v", id.UID, id.GID, id.Additional)
}
