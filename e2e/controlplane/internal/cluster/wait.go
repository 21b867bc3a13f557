package cluster

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// WaitReady polls the apiserver's /readyz until it answers ok, a component
// reports an error on errs, or timeout passes.
func WaitReady(client kubernetes.Interface, errs <-chan error, timeout time.Duration) error {
	return poll(errs, timeout, "apiserver /readyz", func(ctx context.Context) bool {
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(body) == "ok"
	})
}

// WaitUsable waits until the cluster can run the tests' pods: the
// "default" ServiceAccount and the kube-root-ca.crt ConfigMap exist in the
// default namespace (controllers are up) and, with a pod runner, the node
// is registered.
func WaitUsable(client kubernetes.Interface, node string, wantNode bool, errs <-chan error, timeout time.Duration) error {
	return poll(errs, timeout, "default ServiceAccount, kube-root-ca.crt and node", func(ctx context.Context) bool {
		if _, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return false
		}
		if _, err := client.CoreV1().ConfigMaps("default").Get(ctx, "kube-root-ca.crt", metav1.GetOptions{}); err != nil {
			return false
		}
		if !wantNode {
			return true
		}
		n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return true
			}
		}
		return false
	})
}

func poll(errs <-chan error, timeout time.Duration, what string, ok func(context.Context) bool) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		done := ok(ctx)
		cancel()
		if done {
			return nil
		}
		select {
		case err := <-errs:
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
}
