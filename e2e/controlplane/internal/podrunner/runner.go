// Package podrunner plays the node of the test cluster: it registers a
// Node, schedules (binds) pending pods onto it, and runs their containers
// from locally built OCI images under runc.
package podrunner

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// Config is the pod runner's configuration.
type Config struct {
	NodeName    string
	StateDir    string   // pod directories go to <StateDir>/pods
	Images      ImageMap // image repository -> OCI archive
	APIPort     int      // apiserver port on 127.0.0.1 (for pods' env)
	CAFile      string   // cluster CA (for pods' kubeconfig)
	KubeletPort int      // HTTPS port of the logs endpoint
	KubeletCert string
	KubeletKey  string
	PassEnv     []string // host variables passed to every container
}

// Runner watches the pods and owns one podWorker per pod on its node.
type Runner struct {
	cfg      Config
	client   kubernetes.Interface
	recorder record.EventRecorder // events from "kubelet"
	schedRec record.EventRecorder // events from "default-scheduler"
	addrs    *addrPool
	lister   listersv1.PodLister
	runtime  *runcRuntime
	images   *imageStore
	// memoryCgroups: memory limits can be enforced (else the error).
	memoryCgroups   bool
	memoryCgroupErr string
	queue           workqueue.TypedRateLimitingInterface[string]

	mu      sync.Mutex
	workers map[string]*podWorker // by namespace/name
}

// New creates a pod runner using an admin client.
func New(cfg Config, client kubernetes.Interface) (*Runner, error) {
	net, err := claimNet()
	if err != nil {
		return nil, err
	}
	klog.InfoS("pod network", "cidr", fmt.Sprintf("127.%d.0.0/16", net))
	runc, err := findRunc()
	if err != nil {
		return nil, err
	}
	r := &Runner{
		cfg:     cfg,
		client:  client,
		addrs:   newAddrPool(net),
		queue:   workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
		workers: map[string]*podWorker{},
		runtime: &runcRuntime{
			bin:      runc,
			root:     filepath.Join(cfg.StateDir, "runc"),
			cgParent: fmt.Sprintf("/mongoferry-podrunner-%d", net),
		},
		images: newImageStore(filepath.Join(cfg.StateDir, "images")),
	}
	// `controlplane.sh down` removes what a hard-killed runner left there.
	_ = os.WriteFile(filepath.Join(cfg.StateDir, "cgroup-parent"), []byte(r.runtime.cgParent+"\n"), 0o644)
	// Memory limits need a writable cgroup v1 memory hierarchy.
	if err := probeMemoryCgroup(r.runtime.cgParent); err != nil {
		r.memoryCgroupErr = err.Error()
		klog.ErrorS(err, "memory limits will not be enforced")
	} else {
		r.memoryCgroups = true
	}
	klog.InfoS("container runtime", "runc", runc, "version", runcVersion(runc), "memoryLimits", r.memoryCgroups)
	return r, nil
}

// Run registers the node, serves the kubelet endpoint and runs pods until
// ctx ends; then it stops every container (the pods stay in the API).
func (r *Runner) Run(ctx context.Context) error {
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: r.client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	r.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: r.cfg.NodeName})
	r.schedRec = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "default-scheduler"})

	if err := r.registerNode(ctx); err != nil {
		return err
	}
	go r.heartbeat(ctx)
	if err := r.serveKubelet(ctx); err != nil {
		return err
	}

	factory := informers.NewSharedInformerFactory(r.client, 0)
	podInformer := factory.Core().V1().Pods()
	r.lister = podInformer.Lister()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			r.queue.Add(key)
		}
	}
	_, _ = podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	})
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.Informer().HasSynced) {
		return fmt.Errorf("pod informer did not sync")
	}
	for i := 0; i < 4; i++ {
		go r.work()
	}
	klog.InfoS("pod runner started", "node", r.cfg.NodeName, "images", r.cfg.Images.String())
	<-ctx.Done()
	r.queue.ShutDown()
	r.shutdown()
	return nil
}

func (r *Runner) work() {
	for {
		key, quit := r.queue.Get()
		if quit {
			return
		}
		if err := r.sync(key); err != nil {
			klog.ErrorS(err, "sync pod", "pod", key)
			r.queue.AddRateLimited(key)
		} else {
			r.queue.Forget(key)
		}
		r.queue.Done(key)
	}
}

// sync reconciles one pod key: bind it, start, update or stop its worker.
func (r *Runner) sync(key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pod, err := r.lister.Pods(ns).Get(name)
	r.mu.Lock()
	w := r.workers[key]
	r.mu.Unlock()
	if apierrors.IsNotFound(err) {
		if w != nil {
			w.terminate(0, false) // force-deleted: kill now, nothing to report
		}
		return nil
	}
	if err != nil {
		return err
	}
	if w != nil && w.uid != pod.UID {
		w.terminate(0, false) // same name, new pod: the old one is gone
		<-w.finished
		w = nil
	}
	if pod.Spec.NodeName == "" {
		if pod.DeletionTimestamp == nil {
			return r.bind(pod)
		}
		return nil
	}
	if pod.Spec.NodeName != r.cfg.NodeName {
		return nil
	}
	if w == nil {
		switch {
		case pod.DeletionTimestamp != nil:
			r.deletePod(pod) // nothing runs for it here
			return nil
		case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
			return nil // terminal pods are never started again
		}
		w = newPodWorker(r, pod)
		r.mu.Lock()
		r.workers[key] = w
		r.mu.Unlock()
		go func() {
			w.run()
			r.mu.Lock()
			if r.workers[key] == w {
				delete(r.workers, key)
			}
			r.mu.Unlock()
		}()
	}
	w.update(pod)
	return nil
}

// bind is the scheduler's job: every pending pod goes to our one node.
func (r *Runner) bind(pod *corev1.Pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b := &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: r.cfg.NodeName},
	}
	err := r.client.CoreV1().Pods(pod.Namespace).Bind(ctx, b, metav1.CreateOptions{})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("bind: %w", err)
	}
	if err == nil {
		r.schedRec.Event(pod, corev1.EventTypeNormal, "Scheduled", fmt.Sprintf("Successfully assigned %s/%s to %s", pod.Namespace, pod.Name, r.cfg.NodeName))
	}
	return nil
}

// deletePod removes a stopped pod object, as the kubelet does at the end
// of a graceful deletion.
func (r *Runner) deletePod(pod *corev1.Pod) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	zero := int64(0)
	err := r.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero,
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		klog.ErrorS(err, "delete pod", "pod", pod.Namespace+"/"+pod.Name)
	}
}

// shutdown stops every container when the pod runner exits.
func (r *Runner) shutdown() {
	r.mu.Lock()
	ws := make([]*podWorker, 0, len(r.workers))
	for _, w := range r.workers {
		ws = append(ws, w)
	}
	r.mu.Unlock()
	for _, w := range ws {
		w.terminate(3*time.Second, false)
	}
	for _, w := range ws {
		<-w.finished
	}
	removeCgroupParent(r.runtime.cgParent)
}

func (r *Runner) event(pod *corev1.Pod, kind, reason, msg string) {
	if r.recorder != nil && pod != nil {
		r.recorder.Event(pod, kind, reason, msg)
	}
}

// worker returns the running worker for a pod, if any.
func (r *Runner) worker(key string) *podWorker {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.workers[key]
}
