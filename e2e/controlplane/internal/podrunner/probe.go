package podrunner

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probeReadiness maintains the container's Ready flag while p runs. With no
// readiness probe the container is ready once started. httpGet and
// tcpSocket probes are polled against the pod's address; exec and grpc
// probes are not run and count as passing.
func (w *podWorker) probeReadiness(c *ctr, p *process) {
	probe := c.spec.ReadinessProbe
	if probe == nil || (probe.HTTPGet == nil && probe.TCPSocket == nil) {
		w.setReady(c, p, true)
		return
	}
	period := time.Duration(max(probe.PeriodSeconds, 1)) * time.Second
	timeout := time.Duration(max(probe.TimeoutSeconds, 1)) * time.Second
	success, failure := max(probe.SuccessThreshold, 1), max(probe.FailureThreshold, 1)
	select {
	case <-time.After(time.Duration(probe.InitialDelaySeconds) * time.Second):
	case <-p.done:
		return
	}
	var okRun, failRun int32
	for {
		if w.probeOnce(c, probe, timeout) {
			okRun, failRun = okRun+1, 0
			if okRun >= success {
				w.setReady(c, p, true)
			}
		} else {
			okRun, failRun = 0, failRun+1
			if failRun >= failure {
				w.setReady(c, p, false)
			}
		}
		select {
		case <-time.After(period):
		case <-p.done:
			return
		}
	}
}

func (w *podWorker) probeOnce(c *ctr, probe *corev1.Probe, timeout time.Duration) bool {
	switch {
	case probe.HTTPGet != nil:
		g := probe.HTTPGet
		port, ok := resolvePort(c, g.Port)
		if !ok {
			return false
		}
		scheme := "http"
		if g.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		host := w.ip
		if g.Host != "" {
			host = g.Host
		}
		url := fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), g.Path)
		client := http.Client{Timeout: timeout}
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode >= 200 && resp.StatusCode < 400
	case probe.TCPSocket != nil:
		port, ok := resolvePort(c, probe.TCPSocket.Port)
		if !ok {
			return false
		}
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(w.ip, strconv.Itoa(port)), timeout)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}
	return true
}

// resolvePort turns a numeric or named port into a number.
func resolvePort(c *ctr, p intstr.IntOrString) (int, bool) {
	if p.Type == intstr.Int {
		return p.IntValue(), true
	}
	for _, cp := range c.spec.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), true
		}
	}
	return 0, false
}

func (w *podWorker) setReady(c *ctr, p *process, ready bool) {
	w.mu.Lock()
	changed := c.proc == p && c.ready != ready
	if changed {
		c.ready = ready
	}
	w.mu.Unlock()
	if changed {
		w.markDirty()
	}
}
