package podrunner

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/klog/v2"
)

// serveKubelet serves the part of the kubelet API the apiserver uses for
// `kubectl logs` (GET /containerLogs/{namespace}/{pod}/{container}) and
// `kubectl exec` (/exec/{namespace}/{pod}/{container}), over HTTPS on
// 127.0.0.1:KubeletPort, for clients with a certificate of the cluster CA
// (the apiserver's kubelet client certificate).
func (r *Runner) serveKubelet(ctx context.Context) error {
	cert, err := tls.LoadX509KeyPair(r.cfg.KubeletCert, r.cfg.KubeletKey)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(r.cfg.CAFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("GET /containerLogs/{ns}/{pod}/{container}", r.containerLogs)
	mux.HandleFunc("/exec/{ns}/{pod}/{container}", r.execHandler)
	mux.HandleFunc("/exec/{ns}/{pod}/{uid}/{container}", r.execHandler)
	srv := &http.Server{
		Handler:   mux,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert},
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", r.cfg.KubeletPort))
	if err != nil {
		return fmt.Errorf("kubelet endpoint: %w", err)
	}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.ServeTLS(l, "", ""); err != nil && err != http.ErrServerClosed {
			klog.ErrorS(err, "kubelet endpoint")
		}
	}()
	return nil
}

// containerLogs streams a container's log file. Supported query
// parameters: previous, follow, tailLines, limitBytes (timestamps and
// sinceSeconds are ignored: the files carry no timestamps).
func (r *Runner) containerLogs(w http.ResponseWriter, req *http.Request) {
	ns, name, container := req.PathValue("ns"), req.PathValue("pod"), req.PathValue("container")
	q := req.URL.Query()
	pod, err := r.lister.Pods(ns).Get(name)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	path := LogPath(r.cfg.StateDir, ns, name, string(pod.UID), container)
	if q.Get("previous") == "true" {
		path += ".1"
	}
	f, err := os.Open(path)
	if err != nil {
		msg := fmt.Sprintf("container %q in pod %q is waiting to start", container, name)
		if q.Get("previous") == "true" {
			msg = fmt.Sprintf("previous terminated container %q in pod %q not found", container, name)
		}
		http.Error(w, msg, http.StatusBadRequest)
		return
	}
	defer f.Close()
	if n, err := strconv.Atoi(q.Get("tailLines")); err == nil {
		seekTail(f, n)
	}
	var out io.Writer = w
	if n, err := strconv.ParseInt(q.Get("limitBytes"), 10, 64); err == nil {
		out = &limitWriter{w: w, n: n}
	}
	w.Header().Set("Content-Type", "text/plain")
	follow := q.Get("follow") == "true" && q.Get("previous") != "true"
	for {
		if _, err := io.Copy(out, f); err != nil {
			return
		}
		if fl, ok := w.(http.Flusher); ok {
			fl.Flush()
		}
		if !follow || !r.running(ns, name, string(pod.UID), container) || rotated(f, path) {
			return
		}
		select {
		case <-req.Context().Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// running reports whether the container still runs (follow goes on).
func (r *Runner) running(ns, name, uid, container string) bool {
	w := r.worker(ns + "/" + name)
	if w == nil || string(w.uid) != uid {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range append(append([]*ctr{}, w.init...), w.main...) {
		if c.spec.Name == container {
			return c.proc != nil
		}
	}
	return false
}

// rotated is true when path no longer names the open file (the container
// restarted and its old log became .log.1).
func rotated(f *os.File, path string) bool {
	a, err1 := f.Stat()
	b, err2 := os.Stat(path)
	return err1 != nil || err2 != nil || !os.SameFile(a, b)
}

// LogPath is where a container's current log lives.
func LogPath(stateDir, ns, pod, uid, container string) string {
	return filepath.Join(stateDir, "pods", fmt.Sprintf("%s_%s_%s", ns, pod, uid), container+".log")
}

// seekTail positions f at the start of its last n lines.
func seekTail(f *os.File, n int) {
	data, err := io.ReadAll(f)
	if err != nil {
		return
	}
	text := strings.TrimSuffix(string(data), "\n")
	off := len(data)
	if n > 0 && text != "" {
		off = 0
		if i := nthLastNewline(text, n); i >= 0 {
			off = i + 1
		}
	}
	_, _ = f.Seek(int64(off), io.SeekStart)
}

func nthLastNewline(s string, n int) int {
	i := len(s)
	for ; n > 0; n-- {
		i = strings.LastIndexByte(s[:i], '\n')
		if i < 0 {
			return -1
		}
	}
	return i
}

type limitWriter struct {
	w io.Writer
	n int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.w.Write(p)
	l.n -= int64(n)
	return n, err
}
