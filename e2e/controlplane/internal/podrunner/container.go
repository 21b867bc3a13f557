package podrunner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// defaultPath is the PATH of a container whose image sets none.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// startContainer prepares volumes, environment, user and mounts, checks
// the securityContext against the image, then starts the container under
// runc and records it as running.
func (w *podWorker) startContainer(c *ctr) (*process, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pod := w.currentPod()
	img := c.img
	sec := mergeSecurity(pod.Spec.SecurityContext, c.spec.SecurityContext)
	if err := verifyNonRoot(sec, img.Config.User, pod.Name, c.spec.Name); err != nil {
		return nil, err
	}
	passwd, _ := os.ReadFile(filepath.Join(img.Rootfs, "etc/passwd"))
	group, _ := os.ReadFile(filepath.Join(img.Rootfs, "etc/group"))
	id, err := resolveIdentity(sec, img.Config.User, passwd, group)
	if err != nil {
		return nil, err
	}

	res := &envResolver{client: w.r.client, pod: pod, podIP: w.ip, hostIP: "127.0.0.1"}
	vw := &volumeWriter{env: res, root: filepath.Join(w.dir, "volumes"), fsGroup: sec.FSGroup}
	volDirs, err := vw.WriteAll(ctx)
	if err != nil {
		return nil, err
	}
	userEnv, err := res.Resolve(ctx, &c.spec)
	if err != nil {
		return nil, err
	}
	mounts, err := w.mounts(c, pod, volDirs)
	if err != nil {
		return nil, err
	}

	env := w.baseEnv(pod)
	values := map[string]string{}
	for _, kv := range userEnv {
		env = append(env, kv[0]+"="+kv[1])
		values[kv[0]] = kv[1]
	}
	env = mergeEnv(img.Config.Env, env)
	if !hasVar(env, "PATH") {
		env = append([]string{defaultPath}, env...)
	}
	argv := containerArgv(c.spec.Command, c.spec.Args, img.Config, values)
	if len(argv) == 0 {
		return nil, &startError{"no command specified"}
	}
	cwd := c.spec.WorkingDir
	if cwd == "" {
		cwd = img.Config.WorkingDir
	}
	var limit int64
	if q, ok := c.spec.Resources.Limits[corev1.ResourceMemory]; ok {
		limit = q.Value()
	}
	if limit > 0 && !w.r.memoryCgroups {
		w.r.event(pod, corev1.EventTypeWarning, "MemoryLimitNotEnforced", "the pod runner cannot create memory cgroups on this machine: "+w.r.memoryCgroupErr)
		limit = 0
	}

	w.mu.Lock()
	run := c.runs + 1
	w.mu.Unlock()
	spec := buildSpec(specInput{
		Argv:         argv,
		Env:          env,
		Cwd:          cwd,
		User:         id,
		Capabilities: capabilitySet(sec),
		NoNewPrivs:   sec.NoNewPrivileges,
		ReadOnlyRoot: sec.ReadOnlyRootFilesystem,
		Hostname:     pod.Name,
		Mounts:       mounts,
	})
	p, err := w.r.runtime.start(containerRun{
		id:          runcID(string(pod.UID), c.spec.Name, run),
		bundle:      filepath.Join(w.dir, "run", c.spec.Name),
		lower:       img.Rootfs,
		logPath:     filepath.Join(w.dir, c.spec.Name+".log"),
		pidFile:     filepath.Join(w.dir, c.spec.Name+".pid"),
		memoryLimit: limit,
	}, spec)
	if err != nil {
		var se *startError
		if !errors.As(err, &se) {
			err = &startError{err.Error()}
		}
		return nil, err
	}
	w.mu.Lock()
	c.runs = run
	c.cid = p.id
	c.proc = p
	c.state = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(p.started)}}
	w.mu.Unlock()
	w.markDirty()
	w.r.event(pod, corev1.EventTypeNormal, "Started", fmt.Sprintf("Started container %s (image %s, %s)", c.spec.Name, img.Digest, describeIdentity(id)))
	return p, nil
}

// mounts are the container's volume mounts at their mountPath, plus the
// pod's /etc/hosts, /etc/hostname and the host's /etc/resolv.conf.
func (w *podWorker) mounts(c *ctr, pod *corev1.Pod, volDirs map[string]volumeDir) ([]ociMount, error) {
	hosts := filepath.Join(w.dir, "etc-hosts")
	content := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", w.ip, pod.Name)
	if err := os.WriteFile(hosts, []byte(content), 0o644); err != nil {
		return nil, err
	}
	hostname := filepath.Join(w.dir, "etc-hostname")
	if err := os.WriteFile(hostname, []byte(pod.Name+"\n"), 0o644); err != nil {
		return nil, err
	}
	out := []ociMount{bindMount("/etc/hosts", hosts, false), bindMount("/etc/hostname", hostname, false)}
	if _, err := os.Stat("/etc/resolv.conf"); err == nil {
		out = append(out, bindMount("/etc/resolv.conf", "/etc/resolv.conf", true))
	}
	for _, m := range c.spec.VolumeMounts {
		v, ok := volDirs[m.Name]
		if !ok {
			return nil, configErrorf("volumeMount %q: no such volume", m.Name)
		}
		src := v.path
		if m.SubPath != "" {
			sub, ok := confine(m.SubPath)
			if !ok || strings.HasPrefix(m.SubPath, "/") {
				return nil, configErrorf("volumeMount %q: invalid subPath %q", m.Name, m.SubPath)
			}
			src = filepath.Join(src, sub)
			if _, err := os.Stat(src); err != nil {
				if err := os.MkdirAll(src, 0o755); err != nil {
					return nil, err
				}
			}
		}
		out = append(out, bindMount(m.MountPath, src, m.ReadOnly || v.readOnly))
	}
	return out, nil
}

// baseEnv is what every container gets before its own env: the hostname,
// the in-cluster apiserver address (KUBERNETES_SERVICE_*: the pod's
// ServiceAccount token is mounted where in-cluster clients look), and
// variables passed through from the pod runner's environment (--pass-env).
func (w *podWorker) baseEnv(pod *corev1.Pod) []string {
	host, port := "127.0.0.1", strconv.Itoa(w.r.cfg.APIPort)
	env := []string{
		"HOSTNAME=" + pod.Name,
		"KUBERNETES_SERVICE_HOST=" + host,
		"KUBERNETES_SERVICE_PORT=" + port,
		"KUBERNETES_SERVICE_PORT_HTTPS=" + port,
		"KUBERNETES_PORT=tcp://" + host + ":" + port,
	}
	for _, name := range w.r.cfg.PassEnv {
		if v, ok := os.LookupEnv(name); ok && name != "" {
			env = append(env, name+"="+v)
		}
	}
	return env
}

func hasVar(env []string, name string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

// runcID names one run of one container: unique per pod UID, container and
// run, within runc's allowed characters.
func runcID(uid, container string, run int) string {
	u := strings.ReplaceAll(uid, "-", "")
	if len(u) > 12 {
		u = u[:12]
	}
	return fmt.Sprintf("%s-%s-%d", u, container, run)
}

// startError is a failure of the runtime to start the container.
type startError struct{ msg string }

func (e *startError) Error() string { return e.msg }

func startFailureReason(err error) string {
	var ce *configError
	var se *startError
	switch {
	case errors.As(err, &ce):
		return "CreateContainerConfigError"
	case errors.As(err, &se):
		return "RunContainerError"
	}
	return "CreateContainerError"
}

func containerID(c *ctr) string { return "runc://" + c.cid }
