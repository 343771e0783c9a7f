// Package stack starts and stops the real parts of the demo and of the e2e
// test: it builds the binaries (cmd/extproc, cmd/controller, cmd/inflightctl
// into .cache/demo/bin; the test control plane through
// test/controlplane/build.sh), starts the control plane (envtest over the
// cached kube-apiserver and etcd) with a kubeconfig file for the controller
// processes, starts extproc and controller processes on loopback, each in
// its own process group, registers the extprocs in the API as the
// inflight-extproc Service's EndpointSlices (how the controller finds them
// in a cluster), and stops every process it started.
//
// Concurrency: a Stack is used from one goroutine, except Stop, which may
// be called concurrently with the rest (from a signal handler) and is
// idempotent; a Proc's methods are safe for concurrent use. There is no
// package-level mutable state.
package stack

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Proc is one started process, leading its own process group.
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	mu      sync.Mutex
	err     error
}

// StartProc starts bin with args in a new process group, its output
// appended to logDir/name.log.
func StartProc(name, logDir, bin string, args ...string) (*Proc, error) {
	logPath := filepath.Join(logDir, name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		_ = lf.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id (and process group id).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Exited is closed when the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.done }

// Err is the process's exit error (after Exited).
func (p *Proc) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Kill sends SIGKILL to the process group and waits for the process and
// (bounded) for the rest of its group to be reaped.
func (p *Proc) Kill() {
	_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
	<-p.done
	p.waitGroupGone(5 * time.Second)
}

// waitGroupGone polls until no process of the group is left (killed
// grandchildren stay zombies until init reaps them) or timeout passes.
func (p *Proc) waitGroupGone(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for !p.GroupGone() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond) // polling the kernel: there is no event to wait on
	}
	return true
}

// Stop sends SIGTERM to the process group, waits up to grace, then kills
// it. It reports a process that had to be killed.
func (p *Proc) Stop(grace time.Duration) error {
	select {
	case <-p.done:
		if !p.GroupGone() {
			break // the leader is gone, its group is not: signal the group
		}
		return nil
	default:
	}
	_ = syscall.Kill(-p.Pid(), syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		if !p.waitGroupGone(grace) {
			// The leader exited but left processes in its group.
			_ = syscall.Kill(-p.Pid(), syscall.SIGKILL)
			p.waitGroupGone(5 * time.Second)
			return fmt.Errorf("%s (pid %d) exited but left processes in its group: killed", p.Name, p.Pid())
		}
		return nil
	case <-t.C:
		p.Kill()
		return fmt.Errorf("%s (pid %d) did not stop within %v: killed", p.Name, p.Pid(), grace)
	}
}

// GroupGone reports whether no process of p's group is left.
func (p *Proc) GroupGone() bool {
	err := syscall.Kill(-p.Pid(), 0)
	return errors.Is(err, syscall.ESRCH)
}

// Children lists the pids whose parent is this process (for the final
// no-orphans check).
func Children() []int {
	self := os.Getpid()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may contain spaces; parse after ')'.
		s := string(b)
		i := lastIndex(s, ')')
		if i < 0 {
			continue
		}
		var state string
		var ppid int
		if _, err := fmt.Sscanf(s[i+1:], " %s %d", &state, &ppid); err != nil {
			continue
		}
		if ppid == self && state != "Z" {
			out = append(out, pid)
		}
	}
	return out
}

func lastIndex(s string, c byte) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == c {
			return i
		}
	}
	return -1
}
