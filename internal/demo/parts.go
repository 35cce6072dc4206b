package demo

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// part is one child process of the demo: a p2pserver or the OpenID
// provider, with its output in a log file of the work folder.
type part struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	log     *os.File
	exited  chan struct{}
	err     error // set when exited is closed
}

// parts are the running children; stopAll ends them all.
type parts struct {
	list []*part
}

// start runs the command cfg.Command makes for program with args, its
// output going to <work>/<name>.log. The child's environment is this
// process's without any P2P_* variable (a developer's shell may export
// some from the README), plus env.
func (ps *parts) start(ctx context.Context, cfg *Config, name, program string, env []string, args ...string) (*part, error) {
	cmd := cfg.Command(program, args...)
	base := cmd.Env
	if base == nil {
		base = os.Environ()
	}
	cmd.Env = nil
	for _, kv := range base {
		if !strings.HasPrefix(kv, "P2P_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	p := &part{name: name, cmd: cmd, logPath: filepath.Join(cfg.WorkDir, name+".log"), exited: make(chan struct{})}
	var err error
	if p.log, err = os.Create(p.logPath); err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = p.log, p.log
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		p.log.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, program, err)
	}
	ps.list = append(ps.list, p)
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// stopAll interrupts every child (a p2pserver shuts down gracefully on
// SIGINT), waits up to grace for it, then kills what is left.
func (ps *parts) stopAll(grace time.Duration) {
	for _, p := range ps.list {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Signal(os.Interrupt)
		}
	}
	deadline := time.After(grace)
	for _, p := range ps.list {
		select {
		case <-p.exited:
		case <-deadline:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		p.log.Close()
	}
	ps.list = nil
}

// tail returns the last n lines of the part's log.
func (p *part) tail(n int) []string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return lines
}

// waitReady polls url until it answers 200, the part exits, or timeout.
func (p *part) waitReady(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before it answered (%v); its log %s ends:\n    %s", p.name, p.err, p.logPath, strings.Join(p.tail(15), "\n    "))
		case <-ctx.Done():
			return fmt.Errorf("%s did not answer %s within %s; its log %s ends:\n    %s", p.name, url, timeout, p.logPath, strings.Join(p.tail(15), "\n    "))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// freePorts reserves n free ports on 127.0.0.1: each is listened on and
// closed again, so a child can take it a moment later. Another process
// could take one in between; the child then fails to start and says so.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// exitedEarly reports a part that has stopped while the demo still needs
// it, as an error naming its log.
func (ps *parts) exitedEarly() error {
	for _, p := range ps.list {
		select {
		case <-p.exited:
			return fmt.Errorf("%s stopped unexpectedly (%v); its log %s ends:\n    %s", p.name, p.err, p.logPath, strings.Join(p.tail(15), "\n    "))
		default:
		}
	}
	return nil
}
