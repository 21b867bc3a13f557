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

	"mongoferry.io/e2e/controlplane/internal/cluster"
)

// serviceAccountDir is where a pod expects its ServiceAccount credentials.
const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// startContainer prepares volumes, environment and argv, then starts the
// container's process and records it as running.
func (w *podWorker) startContainer(c *ctr) (*process, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pod := w.currentPod()
	res := &envResolver{client: w.r.client, pod: pod, podIP: w.ip, hostIP: "127.0.0.1"}

	vw := &volumeWriter{env: res, root: filepath.Join(w.dir, "volumes")}
	volDirs, err := vw.WriteAll(ctx)
	if err != nil {
		return nil, err
	}
	userEnv, err := res.Resolve(ctx, &c.spec)
	if err != nil {
		return nil, err
	}

	env := w.baseEnv(pod)
	// Mounts: the process cannot see mountPath, so tell it where each one is.
	var mounts []string
	for _, m := range c.spec.VolumeMounts {
		host, ok := volDirs[m.Name]
		if !ok {
			return nil, configErrorf("volumeMount %q: no such volume", m.Name)
		}
		if m.SubPath != "" {
			host = filepath.Join(host, m.SubPath)
		}
		mounts = append(mounts, m.MountPath+"="+host)
		if m.MountPath == serviceAccountDir {
			kc, err := w.writePodKubeconfig(host, pod.Namespace)
			if err != nil {
				return nil, err
			}
			env = append(env, "KUBECONFIG="+kc)
		}
	}
	env = append(env, "POD_RUNNER_MOUNTS="+strings.Join(mounts, ":"))
	values := map[string]string{}
	for _, kv := range userEnv {
		env = append(env, kv[0]+"="+kv[1])
		values[kv[0]] = kv[1]
	}

	// command[0] names the binary inside the image: the mapped host binary
	// plays it. args follow; $(VAR) references are expanded.
	argv := []string{filepath.Base(c.bin)}
	if len(c.spec.Command) > 0 {
		argv = []string{expand(c.spec.Command[0], values)}
		for _, a := range c.spec.Command[1:] {
			argv = append(argv, expand(a, values))
		}
	}
	for _, a := range c.spec.Args {
		argv = append(argv, expand(a, values))
	}

	logPath := filepath.Join(w.dir, c.spec.Name+".log")
	p, err := startProcess(c.bin, argv, env, w.dir, logPath)
	if err != nil {
		return nil, &startError{describe(c.bin, err)}
	}
	w.mu.Lock()
	c.runs++
	c.proc = p
	c.state = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(p.started)}}
	w.mu.Unlock()
	w.markDirty()
	w.r.event(pod, corev1.EventTypeNormal, "Started", fmt.Sprintf("Started container %s (%s as %s)", c.spec.Name, c.spec.Image, c.bin))
	return p, nil
}

// baseEnv is what every container gets before its own env: a PATH, the
// hostname, the in-cluster apiserver address, and variables passed through
// from the pod runner's own environment (--pass-env).
func (w *podWorker) baseEnv(pod *corev1.Pod) []string {
	host, port := "127.0.0.1", strconv.Itoa(w.r.cfg.APIPort)
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOSTNAME=" + pod.Name,
		"HOME=" + filepath.Join(w.dir, "home"),
		"KUBERNETES_SERVICE_HOST=" + host,
		"KUBERNETES_SERVICE_PORT=" + port,
		"KUBERNETES_SERVICE_PORT_HTTPS=" + port,
		"KUBERNETES_PORT=tcp://" + host + ":" + port,
	}
	_ = os.MkdirAll(filepath.Join(w.dir, "home"), 0o755)
	for _, name := range w.r.cfg.PassEnv {
		if v, ok := os.LookupEnv(name); ok {
			env = append(env, name+"="+v)
		}
	}
	return env
}

// writePodKubeconfig writes <podDir>/kubeconfig for the pod's
// ServiceAccount: it reads the token file of the mounted service-account
// volume, so clients authenticate as the pod (RBAC applies).
func (w *podWorker) writePodKubeconfig(saDir, namespace string) (string, error) {
	ca := filepath.Join(saDir, "ca.crt")
	if _, err := os.Stat(ca); err != nil {
		ca = w.r.cfg.CAFile
	}
	path := filepath.Join(w.dir, "kubeconfig")
	server := fmt.Sprintf("https://127.0.0.1:%d", w.r.cfg.APIPort)
	return path, cluster.WriteTokenKubeconfig(path, server, ca, filepath.Join(saDir, "token"), namespace)
}

// startError is a failure to exec the host binary.
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

func containerID(c *ctr) string {
	return fmt.Sprintf("podrunner://%s-%d", c.spec.Name, c.runs)
}
