package podrunner

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/klog/v2"
)

// statusLoop writes the pod status whenever it changed, until stop; then
// writes it a last time.
func (w *podWorker) statusLoop(stop <-chan struct{}) {
	for {
		select {
		case <-w.dirty:
			time.Sleep(50 * time.Millisecond) // coalesce bursts of changes
			w.writeStatus()
		case <-stop:
			w.writeStatus()
			return
		}
	}
}

func (w *podWorker) writeStatus() {
	// A node going down (or a pod already gone) reports nothing: like a
	// kubelet, the pod runner restarts the containers when it comes back.
	w.mu.Lock()
	quiet := w.terminating() && !w.deleteAfter
	w.mu.Unlock()
	if quiet {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pods := w.r.client.CoreV1().Pods(w.currentPod().Namespace)
	name := w.currentPod().Name
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		pod, err := pods.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.UID != w.uid {
			return nil
		}
		pod.Status = w.buildStatus(pod.Status)
		_, err = pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) {
		klog.ErrorS(err, "update pod status", "pod", w.key)
	}
}

// buildStatus computes the pod status the way a kubelet reports it.
func (w *podWorker) buildStatus(old corev1.PodStatus) corev1.PodStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := corev1.PodStatus{
		Phase:     w.phase(),
		HostIP:    "127.0.0.1",
		HostIPs:   []corev1.HostIP{{IP: "127.0.0.1"}},
		PodIP:     w.ip,
		PodIPs:    []corev1.PodIP{{IP: w.ip}},
		StartTime: &w.startTime,
		QOSClass:  old.QOSClass,
	}
	for _, c := range w.init {
		st.InitContainerStatuses = append(st.InitContainerStatuses, containerStatus(c))
	}
	for _, c := range w.main {
		st.ContainerStatuses = append(st.ContainerStatuses, containerStatus(c))
	}

	initialized := !w.failedInit
	for _, c := range w.init {
		initialized = initialized && c.done && c.state.Terminated != nil && c.state.Terminated.ExitCode == 0
	}
	ready := st.Phase == corev1.PodRunning
	for _, c := range w.main {
		ready = ready && c.ready
	}
	conds := []struct {
		t  corev1.PodConditionType
		ok bool
	}{
		{corev1.PodReadyToStartContainers, true},
		{corev1.PodInitialized, initialized},
		{corev1.ContainersReady, ready},
		{corev1.PodReady, ready},
		{corev1.PodScheduled, true},
	}
	for _, c := range conds {
		st.Conditions = append(st.Conditions, condition(old, c.t, c.ok))
	}
	return st
}

// phase follows the kubelet's rules: Pending until every init container
// succeeded and every container started once; Succeeded/Failed when no
// container will run again; Running otherwise.
func (w *podWorker) phase() corev1.PodPhase {
	if w.failedInit {
		return corev1.PodFailed
	}
	for _, c := range w.init {
		if !c.done {
			return corev1.PodPending
		}
	}
	allDone, allZero := true, true
	for _, c := range w.main {
		if c.runs == 0 && !c.done {
			return corev1.PodPending
		}
		if !c.done {
			allDone = false
		} else if c.state.Terminated == nil || c.state.Terminated.ExitCode != 0 {
			allZero = false
		}
	}
	switch {
	case !allDone:
		return corev1.PodRunning
	case allZero:
		return corev1.PodSucceeded
	}
	return corev1.PodFailed
}

func containerStatus(c *ctr) corev1.ContainerStatus {
	started := c.state.Running != nil
	cs := corev1.ContainerStatus{
		Name:                 c.spec.Name,
		State:                c.state,
		LastTerminationState: c.last,
		Ready:                c.ready,
		RestartCount:         c.restarts,
		Image:                c.spec.Image,
		ImageID:              imageID(c),
		Started:              &started,
	}
	if c.runs > 0 {
		cs.ContainerID = containerID(c)
	}
	return cs
}

// condition keeps the previous transition time when the value is unchanged.
func condition(old corev1.PodStatus, t corev1.PodConditionType, ok bool) corev1.PodCondition {
	status := corev1.ConditionFalse
	if ok {
		status = corev1.ConditionTrue
	}
	now := metav1.Now()
	for _, c := range old.Conditions {
		if c.Type == t && c.Status == status {
			now = c.LastTransitionTime
		}
	}
	return corev1.PodCondition{Type: t, Status: status, LastTransitionTime: now}
}

// imageID is the image's manifest digest, as a runtime reports it.
func imageID(c *ctr) string {
	if c.img == nil {
		return ""
	}
	return repository(c.spec.Image) + "@" + c.img.Digest
}
