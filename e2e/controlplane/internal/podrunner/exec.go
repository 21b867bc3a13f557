package podrunner

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"k8s.io/apimachinery/pkg/types"
	remotecommandconsts "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/client-go/tools/remotecommand"
	crirc "k8s.io/kubelet/pkg/cri/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// execHandler serves `kubectl exec` (SPDY or WebSocket streams, as the
// apiserver proxies them): the command runs in the container with
// `runc exec`. A TTY is not offered: the command runs without one.
func (r *Runner) execHandler(w http.ResponseWriter, req *http.Request) {
	ns, name, container := req.PathValue("ns"), req.PathValue("pod"), req.PathValue("container")
	opts, err := crirc.NewOptions(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	opts.TTY = false
	cmd := req.URL.Query()["command"]
	ex := &containerExec{r: r, ns: ns}
	crirc.ServeExec(w, req, ex, name, types.UID(req.PathValue("uid")), container, cmd, opts,
		4*time.Hour, 30*time.Second, remotecommandconsts.SupportedStreamingProtocols)
}

type containerExec struct {
	r  *Runner
	ns string
}

// ExecInContainer implements the kubelet's streaming Executor.
func (e *containerExec) ExecInContainer(_ context.Context, name string, uid types.UID, container string, cmd []string, in io.Reader, out, errw io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	if len(cmd) == 0 {
		return fmt.Errorf("no command")
	}
	p := e.r.runningProcess(e.ns, name, uid, container)
	if p == nil {
		return fmt.Errorf("container %q in pod %s/%s is not running", container, e.ns, name)
	}
	var outW, errW io.Writer = io.Discard, io.Discard
	if out != nil {
		outW = out
	}
	if errw != nil {
		errW = errw
	}
	code, err := p.exec(cmd, in, outW, errW)
	if err != nil {
		return err
	}
	if code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", code), Code: code}
	}
	return nil
}

// runningProcess is the current run of a container, if it runs.
func (r *Runner) runningProcess(ns, name string, uid types.UID, container string) *process {
	w := r.worker(ns + "/" + name)
	if w == nil || (uid != "" && w.uid != uid) {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range append(append([]*ctr{}, w.init...), w.main...) {
		if c.spec.Name == container {
			return c.proc
		}
	}
	return nil
}
