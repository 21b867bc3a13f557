package podrunner

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// process is one run of one container: a host process in its own process
// group, its stdout and stderr appended to <podDir>/<container>.log.
type process struct {
	cmd     *exec.Cmd
	pidFile string
	done    chan struct{} // closed when the process has exited
	exit    int           // exit code (128+signal when killed by a signal)
	started time.Time
	ended   time.Time
}

// startProcess rotates the previous log to .log.1 and starts argv.
// argv[0] is the name the program sees; bin is the host path to execute.
func startProcess(bin string, argv, env []string, dir, logPath string) (*process, error) {
	if st, err := os.Stat(logPath); err == nil && st.Size() > 0 {
		_ = os.Rename(logPath, logPath+".1")
	}
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{
		Path:   bin,
		Args:   argv,
		Env:    env,
		Dir:    dir,
		Stdout: log,
		Stderr: log,
		SysProcAttr: &syscall.SysProcAttr{
			Setpgid:   true,            // signal the container's whole tree
			Pdeathsig: syscall.SIGKILL, // never outlive the pod runner
		},
	}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{}), started: time.Now()}
	// The pid file lets `controlplane.sh down` kill leftovers if the pod
	// runner itself was killed hard.
	p.pidFile = logPath[:len(logPath)-len(filepath.Ext(logPath))] + ".pid"
	_ = os.WriteFile(p.pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
	go func() {
		err := cmd.Wait()
		log.Close()
		p.exit = exitCode(err)
		p.ended = time.Now()
		_ = os.Remove(p.pidFile)
		// Reap the rest of the group: a container ends with its main process.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		close(p.done)
	}()
	return p, nil
}

// stop sends SIGTERM to the process group, then SIGKILL after grace.
func (p *process) stop(grace time.Duration) {
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-p.done
	}
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

// describe is a short human text for a start failure.
func describe(bin string, err error) string {
	return fmt.Sprintf("failed to start %s: %v", bin, err)
}
