package podrunner

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// process is one run of one container under runc (`runc run`, foreground,
// no terminal): the container writes its stdout and stderr straight to
// <podDir>/<container>.log.
type process struct {
	id      string // runc container id
	runc    *runcRuntime
	cmd     *exec.Cmd
	bundle  string
	cg      *memCgroup    // nil without a memory limit
	done    chan struct{} // closed when the container has exited
	exit    int           // exit code (128+signal when killed by a signal)
	oom     bool          // killed by the OOM killer (memory limit)
	failed  string        // runc's error when the process never started
	started time.Time
	ended   time.Time
}

// runcRuntime runs containers with runc; its state lives under root.
type runcRuntime struct {
	bin      string // runc binary
	root     string // runc --root
	cgParent string // cgroup of this pod runner's containers, e.g. /mongoferry-podrunner-7
}

func (rt *runcRuntime) command(args ...string) *exec.Cmd {
	return exec.Command(rt.bin, append([]string{"--root", rt.root}, args...)...)
}

// containerRun is what start needs beyond the spec.
type containerRun struct {
	id          string
	bundle      string // <podDir>/run/<container>
	lower       string // the image's unpacked root filesystem
	logPath     string
	pidFile     string // written by runc: the container's init pid (for `down`)
	memoryLimit int64  // bytes; 0 = none
}

// start prepares the bundle (an overlay of the image's rootfs, fresh for
// each run, as a container's writable layer is), the memory cgroup and
// config.json, then runs the container.
func (rt *runcRuntime) start(run containerRun, spec ociSpec) (*process, error) {
	if st, err := os.Stat(run.logPath); err == nil && st.Size() > 0 {
		_ = os.Rename(run.logPath, run.logPath+".1")
	}
	rt.cleanupBundle(run.id, run.bundle)
	rootfs := filepath.Join(run.bundle, "rootfs")
	for _, d := range []string{rootfs, filepath.Join(run.bundle, "upper"), filepath.Join(run.bundle, "work")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", run.lower, filepath.Join(run.bundle, "upper"), filepath.Join(run.bundle, "work"))
	if err := syscall.Mount("overlay", rootfs, "overlay", 0, opts); err != nil {
		return nil, fmt.Errorf("overlay mount of the image's root filesystem: %w", err)
	}
	p := &process{id: run.id, runc: rt, bundle: run.bundle, done: make(chan struct{})}
	fail := func(err error) (*process, error) {
		p.release()
		return nil, err
	}
	spec.Root.Path = rootfs
	if run.memoryLimit > 0 {
		cg, err := newMemCgroup(rt.cgParent+"/"+run.id, run.memoryLimit)
		if err != nil {
			return fail(err)
		}
		p.cg = cg
		spec.Linux.CgroupsPath = cg.runcPath()
	} else {
		spec.Linux.CgroupsPath = rt.cgParent + "/" + run.id
	}
	data, err := json.MarshalIndent(spec, "", " ")
	if err != nil {
		return fail(err)
	}
	if err := os.WriteFile(filepath.Join(run.bundle, "config.json"), data, 0o600); err != nil {
		return fail(err)
	}
	log, err := os.OpenFile(run.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o644)
	if err != nil {
		return fail(err)
	}
	_ = os.Remove(run.pidFile)
	cmd := rt.command("run", "--bundle", run.bundle, "--pid-file", run.pidFile, run.id)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL, // runc goes with the pod runner; `down` kills containers left behind
	}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fail(&startError{fmt.Sprintf("failed to start runc: %v", err)})
	}
	p.cmd, p.started = cmd, time.Now()
	go func() {
		err := cmd.Wait()
		log.Close()
		p.exit = exitCode(err)
		p.oom = p.cg.OOMKilled()
		p.ended = time.Now()
		// runc writes the pid file once the process runs: without it, the
		// container never started and the log ends with runc's error.
		if _, err := os.Stat(run.pidFile); err != nil && p.exit != 0 {
			p.failed = lastLine(run.logPath)
		}
		_ = os.Remove(run.pidFile)
		p.release()
		close(p.done)
	}()
	return p, nil
}

// release deletes the runc container, the overlay and the cgroup.
func (p *process) release() {
	p.runc.cleanupBundle(p.id, p.bundle)
	if p.cg != nil {
		p.cg.remove()
	} else {
		removeCgroupParent(p.runc.cgParent + "/" + p.id)
	}
}

// cleanupBundle removes what a previous run with this id left.
func (rt *runcRuntime) cleanupBundle(id, bundle string) {
	_ = rt.command("delete", "--force", id).Run()
	rootfs := filepath.Join(bundle, "rootfs")
	for syscall.Unmount(rootfs, syscall.MNT_DETACH) == nil {
	}
	if err := os.RemoveAll(bundle); err != nil {
		klog.ErrorS(err, "remove container bundle", "bundle", bundle)
	}
}

// signal sends a signal to the container's init (PID 1 of its namespace).
func (p *process) signal(sig string) error {
	out, err := p.runc.command("kill", p.id, sig).CombinedOutput()
	if err != nil {
		return fmt.Errorf("runc kill %s %s: %v: %s", p.id, sig, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// stop sends SIGTERM, then SIGKILL after grace.
func (p *process) stop(grace time.Duration) {
	if p.signal("TERM") != nil {
		// Not created yet or already gone: runc itself forwards signals.
		_ = syscall.Kill(p.cmd.Process.Pid, syscall.SIGTERM)
	}
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	if p.signal("KILL") != nil {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
	<-p.done
}

// exec runs a command in the running container as its process user, with
// the container's environment (`runc exec`); the exit code is returned.
func (p *process) exec(argv []string, in io.Reader, out, errOut io.Writer) (int, error) {
	cmd := p.runc.command(append([]string{"exec", p.id}, argv...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = in, out, errOut
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return exitCode(err), nil
	}
	return 0, err
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 128
}

// findRunc locates the runc binary (Debian package runc).
func findRunc() (string, error) {
	if p := os.Getenv("PODRUNNER_RUNC"); p != "" {
		return p, nil
	}
	p, err := exec.LookPath("runc")
	if err != nil {
		return "", fmt.Errorf("runc not found (apt-get install runc; e2e/scripts/install-container-tools.sh does it): %w", err)
	}
	return p, nil
}

// runcVersion is the first line of `runc --version`, for the node info.
func runcVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "unknown"
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(strings.TrimPrefix(line, "runc version "))
}

// lastLine is the last non-empty line of a file (at most 4 KiB read).
func lastLine(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > 4096 {
		_, _ = f.Seek(st.Size()-4096, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
