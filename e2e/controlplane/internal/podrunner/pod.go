package podrunner

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
)

// maxGrace caps terminationGracePeriodSeconds so tests never wait long.
const maxGrace = 10 * time.Second

// podWorker plays the kubelet for one pod (one UID): it prepares the
// volumes, runs the init containers then the containers as processes,
// restarts them by restartPolicy, reports status, and on deletion stops
// them and removes the pod object.
type podWorker struct {
	r   *Runner
	uid types.UID
	key string // namespace/name
	dir string // <state>/pods/<ns>_<name>_<uid>

	mu         sync.Mutex
	pod        *corev1.Pod // latest version seen
	ip         string
	startTime  metav1.Time
	init, main []*ctr
	failedInit bool

	termOnce    sync.Once
	termCh      chan struct{} // closed when the pod must stop
	grace       time.Duration
	deleteAfter bool // remove the pod object once stopped (graceful delete)

	dirty    chan struct{} // status needs writing
	finished chan struct{} // closed when the worker is gone
}

// ctr is the runtime state of one container of the pod.
type ctr struct {
	spec     corev1.Container
	isInit   bool
	state    corev1.ContainerState
	last     corev1.ContainerState
	restarts int32
	ready    bool
	done     bool // terminated and will not be restarted
	runs     int
	cid      string // runc id of the latest run
	img      *image // nil until the image is known
	proc     *process
}

func newPodWorker(r *Runner, pod *corev1.Pod) *podWorker {
	w := &podWorker{
		r:        r,
		uid:      pod.UID,
		key:      pod.Namespace + "/" + pod.Name,
		dir:      filepath.Join(r.cfg.StateDir, "pods", fmt.Sprintf("%s_%s_%s", pod.Namespace, pod.Name, pod.UID)),
		pod:      pod.DeepCopy(),
		termCh:   make(chan struct{}),
		dirty:    make(chan struct{}, 1),
		finished: make(chan struct{}),
	}
	for _, c := range pod.Spec.InitContainers {
		w.init = append(w.init, &ctr{spec: c, isInit: true})
	}
	for _, c := range pod.Spec.Containers {
		w.main = append(w.main, &ctr{spec: c})
	}
	// After a pod runner restart, restart counts go on from the status.
	for _, cs := range pod.Status.ContainerStatuses {
		for _, c := range w.main {
			if c.spec.Name == cs.Name {
				c.restarts = cs.RestartCount
			}
		}
	}
	return w
}

// update records a newer version of the pod; a deletion timestamp starts
// the graceful stop.
func (w *podWorker) update(pod *corev1.Pod) {
	w.mu.Lock()
	w.pod = pod.DeepCopy()
	w.mu.Unlock()
	if pod.DeletionTimestamp != nil {
		grace := maxGrace
		if pod.DeletionGracePeriodSeconds != nil {
			grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
		}
		w.terminate(min(grace, maxGrace), true)
	}
}

// terminate asks the worker to stop its processes (SIGTERM, SIGKILL after
// grace) and, if deleteAfter, to remove the pod object afterwards.
func (w *podWorker) terminate(grace time.Duration, deleteAfter bool) {
	w.termOnce.Do(func() {
		w.mu.Lock()
		w.grace, w.deleteAfter = grace, deleteAfter
		w.mu.Unlock()
		close(w.termCh)
	})
}

func (w *podWorker) terminating() bool {
	select {
	case <-w.termCh:
		return true
	default:
		return false
	}
}

func (w *podWorker) markDirty() {
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

// sleep waits d or until termination; false means "terminating".
func (w *podWorker) sleep(d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case <-w.termCh:
		return false
	}
}

// run is the whole life of the pod on this node.
func (w *podWorker) run() {
	defer close(w.finished)
	statusDone := make(chan struct{})
	stopStatus := make(chan struct{})
	go func() { defer close(statusDone); w.statusLoop(stopStatus) }()

	w.setup()
	if w.imagesKnown() && !w.terminating() {
		if w.runInit() {
			w.runMain()
		}
	}
	<-w.termCh // a pod stays on the node (with its status) until deleted
	w.stopAll()
	close(stopStatus)
	<-statusDone

	w.mu.Lock()
	del, pod := w.deleteAfter, w.pod
	w.mu.Unlock()
	if del {
		w.r.deletePod(pod)
	}
	w.r.addrs.Release(w.ip)
	klog.V(2).InfoS("pod worker finished", "pod", w.key)
}

// setup gives the pod its address and directory and reports it Pending.
func (w *podWorker) setup() {
	w.mu.Lock()
	defer w.mu.Unlock()
	ip, err := w.r.addrs.Take(w.pod.Status.PodIP)
	if err != nil {
		klog.ErrorS(err, "pod address", "pod", w.key)
	}
	w.ip = ip
	w.startTime = metav1.Now()
	_ = os.MkdirAll(w.dir, 0o755)
	reason := "ContainerCreating"
	if len(w.init) > 0 {
		reason = "PodInitializing"
	}
	for _, c := range w.init {
		c.state = waiting("ContainerCreating", "")
	}
	for _, c := range w.main {
		c.state = waiting(reason, "")
	}
	w.markDirty()
}

// imagesKnown finds every container's image among the local OCI archives
// and unpacks it. A pod with an unknown image never runs: its containers
// stay waiting, as on a node with imagePullPolicy Never and no such image.
func (w *podWorker) imagesKnown() bool {
	w.mu.Lock()
	ctrs := append(append([]*ctr{}, w.init...), w.main...)
	pod := w.pod
	w.mu.Unlock()
	ok := true
	for _, c := range ctrs {
		archive, known := w.r.cfg.Images.Resolve(c.spec.Image)
		reason, msg := "ErrImageNeverPull", ""
		if known {
			img, err := w.r.images.Get(archive)
			if err == nil {
				w.mu.Lock()
				c.img = img
				w.mu.Unlock()
				continue
			}
			reason, msg = "ErrImagePull", fmt.Sprintf("Failed to load image %q from %s: %v", c.spec.Image, archive, err)
		} else {
			msg = fmt.Sprintf("Container image %q is not present with pull policy of Never: the mongoferry pod runner only runs the project's image(s) (%s)", c.spec.Image, w.r.cfg.Images)
		}
		ok = false
		w.mu.Lock()
		c.state = waiting(reason, msg)
		w.mu.Unlock()
		w.r.event(pod, corev1.EventTypeWarning, reason, msg)
	}
	w.markDirty()
	return ok
}

// runInit runs the init containers one after the other; false if the pod
// cannot proceed (failed with restartPolicy Never, or terminating).
func (w *podWorker) runInit() bool {
	for _, c := range w.init {
		w.supervise(c)
		w.mu.Lock()
		failed := c.state.Terminated == nil || c.state.Terminated.ExitCode != 0
		if failed && !w.terminating() {
			w.failedInit = true
			w.markDirty()
		}
		w.mu.Unlock()
		if failed {
			return false
		}
	}
	return true
}

// runMain runs all containers concurrently until none will restart.
func (w *podWorker) runMain() {
	var wg sync.WaitGroup
	for _, c := range w.main {
		wg.Add(1)
		go func() { defer wg.Done(); w.supervise(c) }()
	}
	wg.Wait()
}

// supervise runs one container until it ends for good: it restarts it by
// the pod's restartPolicy with a short exponential back-off (1s..10s).
func (w *podWorker) supervise(c *ctr) {
	backoff := time.Second
	for !w.terminating() {
		p, err := w.startContainer(c)
		if err != nil {
			w.mu.Lock()
			c.state = waiting(startFailureReason(err), err.Error())
			w.mu.Unlock()
			w.r.event(w.currentPod(), corev1.EventTypeWarning, "Failed", fmt.Sprintf("Error: %v", err))
			w.markDirty()
			if !w.sleep(backoff) {
				return
			}
			backoff = min(2*backoff, maxGrace)
			continue
		}
		go w.probeReadiness(c, p)
		select {
		case <-p.done:
		case <-w.termCh:
			return // stopAll stops the process and records its end
		}
		restart := w.recordExit(c, p)
		if !restart {
			return
		}
		if time.Since(p.started) > 10*time.Second {
			backoff = time.Second
		}
		w.mu.Lock()
		c.last = c.state
		c.state = waiting("CrashLoopBackOff", fmt.Sprintf("back-off %s restarting failed container=%s pod=%s", backoff, c.spec.Name, w.pod.Name))
		w.mu.Unlock()
		w.markDirty()
		if !w.sleep(backoff) {
			return
		}
		backoff = min(2*backoff, maxGrace)
		w.mu.Lock()
		c.restarts++
		w.mu.Unlock()
	}
}

// recordExit stores a container's termination; true if it must restart.
func (w *podWorker) recordExit(c *ctr, p *process) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	c.state = terminated(c, p)
	c.ready = false
	c.proc = nil
	policy := w.pod.Spec.RestartPolicy
	var restart bool
	switch {
	case c.isInit:
		restart = p.exit != 0 && policy != corev1.RestartPolicyNever
	case policy == corev1.RestartPolicyNever:
	case policy == corev1.RestartPolicyOnFailure:
		restart = p.exit != 0
	default: // Always
		restart = true
	}
	c.done = !restart
	w.markDirty()
	return restart
}

// stopAll stops every running container (SIGTERM, then SIGKILL after the
// grace period) and records them as terminated.
func (w *podWorker) stopAll() {
	w.mu.Lock()
	grace := w.grace
	var running []*ctr
	for _, c := range append(append([]*ctr{}, w.init...), w.main...) {
		if c.proc != nil {
			running = append(running, c)
		}
	}
	w.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range running {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := c.proc
			if grace > 0 {
				w.r.event(w.currentPod(), corev1.EventTypeNormal, "Killing", "Stopping container "+c.spec.Name)
			}
			p.stop(grace)
			w.mu.Lock()
			c.state = terminated(c, p)
			c.ready, c.done, c.proc = false, true, nil
			w.mu.Unlock()
		}()
	}
	wg.Wait()
	w.markDirty()
}

func (w *podWorker) currentPod() *corev1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pod
}

func waiting(reason, msg string) corev1.ContainerState {
	return corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}
}

func terminated(c *ctr, p *process) corev1.ContainerState {
	reason, msg := "Completed", ""
	switch {
	case p.oom:
		reason = "OOMKilled"
	case p.failed != "":
		reason, msg = "StartError", p.failed
	case p.exit != 0:
		reason = "Error"
	}
	return corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode:    int32(p.exit),
		Reason:      reason,
		Message:     msg,
		StartedAt:   metav1.NewTime(p.started),
		FinishedAt:  metav1.NewTime(p.ended),
		ContainerID: containerID(c),
	}}
}
