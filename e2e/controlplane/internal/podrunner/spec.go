package podrunner

import (
	"strings"
)

// The subset of the OCI runtime specification (config.json) the pod runner
// writes for runc.

type ociSpec struct {
	OCIVersion  string            `json:"ociVersion"`
	Process     ociProcess        `json:"process"`
	Root        ociRoot           `json:"root"`
	Hostname    string            `json:"hostname,omitempty"`
	Mounts      []ociMount        `json:"mounts"`
	Linux       ociLinux          `json:"linux"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type ociProcess struct {
	Terminal        bool            `json:"terminal"`
	User            ociUser         `json:"user"`
	Args            []string        `json:"args"`
	Env             []string        `json:"env"`
	Cwd             string          `json:"cwd"`
	Capabilities    ociCapabilities `json:"capabilities"`
	NoNewPrivileges bool            `json:"noNewPrivileges"`
}

type ociUser struct {
	UID            int64   `json:"uid"`
	GID            int64   `json:"gid"`
	AdditionalGids []int64 `json:"additionalGids,omitempty"`
}

type ociCapabilities struct {
	Bounding    []string `json:"bounding"`
	Effective   []string `json:"effective"`
	Permitted   []string `json:"permitted"`
	Inheritable []string `json:"inheritable"`
	Ambient     []string `json:"ambient"`
}

type ociRoot struct {
	Path     string `json:"path"`
	Readonly bool   `json:"readonly"`
}

type ociMount struct {
	Destination string   `json:"destination"`
	Type        string   `json:"type,omitempty"`
	Source      string   `json:"source,omitempty"`
	Options     []string `json:"options,omitempty"`
}

type ociNamespace struct {
	Type string `json:"type"`
	Path string `json:"path,omitempty"`
}

type ociLinux struct {
	Namespaces    []ociNamespace `json:"namespaces"`
	CgroupsPath   string         `json:"cgroupsPath,omitempty"`
	Resources     *ociResources  `json:"resources,omitempty"`
	MaskedPaths   []string       `json:"maskedPaths,omitempty"`
	ReadonlyPaths []string       `json:"readonlyPaths,omitempty"`
}

type ociResources struct {
	Devices []ociDeviceRule `json:"devices,omitempty"`
}

type ociDeviceRule struct {
	Allow  bool   `json:"allow"`
	Access string `json:"access,omitempty"`
}

// containerArgv follows Kubernetes: command replaces the image's
// entrypoint, args replace its cmd; a command without args drops the cmd.
func containerArgv(command, args []string, cfg imageConfig, values map[string]string) []string {
	var argv []string
	switch {
	case len(command) > 0:
		argv = append(argv, command...)
		argv = append(argv, args...)
	case len(args) > 0:
		argv = append(append(argv, cfg.Entrypoint...), args...)
	default:
		argv = append(append(argv, cfg.Entrypoint...), cfg.Cmd...)
	}
	for i, a := range argv {
		argv[i] = expand(a, values)
	}
	return argv
}

// mergeEnv puts the container's variables over the image's (by name).
func mergeEnv(image, container []string) []string {
	idx := map[string]int{}
	var out []string
	for _, kv := range append(append([]string(nil), image...), container...) {
		name, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[name]; ok {
			out[i] = kv
			continue
		}
		idx[name] = len(out)
		out = append(out, kv)
	}
	return out
}

// specInput is everything that decides a container's config.json.
type specInput struct {
	Argv         []string
	Env          []string
	Cwd          string
	User         identity
	Capabilities []string
	NoNewPrivs   bool
	ReadOnlyRoot bool
	Rootfs       string
	Hostname     string
	Mounts       []ociMount // volumes and /etc files, after the defaults
	CgroupsPath  string
}

// buildSpec makes the runtime spec: new pid, ipc, uts and mount namespaces;
// the host's network namespace (each pod binds its own loopback address).
func buildSpec(in specInput) ociSpec {
	cwd := in.Cwd
	if cwd == "" {
		cwd = "/"
	}
	caps := in.Capabilities
	if caps == nil {
		caps = []string{}
	}
	mounts := []ociMount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
	}
	mounts = append(mounts, in.Mounts...)
	return ociSpec{
		OCIVersion: "1.0.2",
		Process: ociProcess{
			User: ociUser{UID: in.User.UID, GID: in.User.GID, AdditionalGids: in.User.Additional},
			Args: in.Argv,
			Env:  in.Env,
			Cwd:  cwd,
			Capabilities: ociCapabilities{
				Bounding: caps, Permitted: caps, Effective: caps,
				Inheritable: []string{}, Ambient: []string{},
			},
			NoNewPrivileges: in.NoNewPrivs,
		},
		Root:     ociRoot{Path: in.Rootfs, Readonly: in.ReadOnlyRoot},
		Hostname: in.Hostname,
		Mounts:   mounts,
		Linux: ociLinux{
			Namespaces:  []ociNamespace{{Type: "pid"}, {Type: "ipc"}, {Type: "uts"}, {Type: "mount"}},
			CgroupsPath: in.CgroupsPath,
			Resources:   &ociResources{Devices: []ociDeviceRule{{Allow: false, Access: "rwm"}}},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
			},
			ReadonlyPaths: []string{
				"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
			},
		},
	}
}

// bindMount is a bind mount of a host path (read-only when ro).
func bindMount(dest, source string, ro bool) ociMount {
	opts := []string{"rbind", "rprivate", "nosuid", "nodev"}
	if ro {
		opts = append(opts, "ro")
	} else {
		opts = append(opts, "rw")
	}
	return ociMount{Destination: dest, Type: "bind", Source: source, Options: opts}
}
