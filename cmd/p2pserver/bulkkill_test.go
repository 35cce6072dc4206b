package main

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// childPayer is p2pserver run as a child process of the test, from the
// binary built from this package.
type childPayer struct {
	t    testing.TB
	bin  string
	args []string
	cmd  *exec.Cmd
	URL  string
}

// buildP2PServer builds ./cmd/p2pserver into a temporary folder.
func buildP2PServer(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "p2pserver")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func startChild(t *testing.T, bin string, args ...string) *childPayer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := &childPayer{t: t, bin: bin, URL: "http://" + addr, args: append([]string{"-addr", addr}, args...)}
	c.start()
	t.Cleanup(func() {
		if c.cmd != nil {
			_ = c.cmd.Process.Kill()
			_ = c.cmd.Wait()
		}
	})
	return c
}

// start runs the binary and waits until it answers /healthz.
func (c *childPayer) start() {
	c.t.Helper()
	c.cmd = exec.Command(c.bin, c.args...)
	if testing.Verbose() {
		c.cmd.Stdout, c.cmd.Stderr = os.Stderr, os.Stderr
	}
	if err := c.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(c.URL + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the child p2pserver did not answer /healthz: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill9 ends the child with SIGKILL: no shutdown, nothing flushed.
func (c *childPayer) kill9() {
	c.t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		c.t.Fatal(err)
	}
	_ = c.cmd.Wait()
	c.cmd = nil
}

// term stops the child as an operator would (SIGTERM) and waits.
func (c *childPayer) term() {
	c.t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	_ = c.cmd.Wait()
	c.cmd = nil
}

// TestBulkExchangeSurvivesKill9: the new payer is a real p2pserver
// process, killed with SIGKILL in the middle of an export file, after
// two chunks of it were committed; started again on the same database it
// resumes the job after the last committed line, and ends with every
// resource of the export once, each with one Provenance.
func TestBulkExchangeSurvivesKill9(t *testing.T) {
	t.Parallel()
	bin := buildP2PServer(t)
	fp := &faultPair{traffic: newTraffic()}
	fp.source = startLive(t, "-admin-token", testAdmin, "-secret-key", testSecretKey,
		"-organization-name", oldPayerName, "-organization-id", "OLDPAYER", "-export-retention", "1h")
	db := filepath.Join(t.TempDir(), "target.db")
	targetArgs := []string{"-admin-token", testAdmin, "-backoffice-token", testBackoffice,
		"-secret-key", "0000000000000000000000000000000000000000000000000000000000000004",
		"-mdm-identifier-system", "urn:old-payer:member-id", "-bulk-min-poll", "20ms", "-bulk-chunk", "25"}
	child := startChild(t, bin, append([]string{"-db", db}, targetArgs...)...)
	target := &payer{t: t, URL: child.URL}
	fp.pid, _ = connectAsSystem(t, target, fp.source.payer, "New Payer", newPayerNPI, oldPayerName, "OLDPAYER")
	fp.members = loadBulkMembers(t, fp.source.payer, 3)
	createMembers(t, target, fp.members)
	for _, m := range fp.members {
		fp.list = append(fp.list, memberRequest(m, m.coverage, newPayerNPI))
	}
	tr := fp.traffic
	tr.stallAt = 60
	fp.source.setFault(tr.hook(fp.source))

	path := startBulk(t, target, fp.pid, map[string]any{"members": fp.list})
	select {
	case <-tr.stalled:
	case <-time.After(time.Minute):
		t.Fatal("no file stalled")
	}
	status := func() map[string]any {
		var st map[string]any
		if code := target.call("GET", path, testBackoffice, nil, &st); code != 200 {
			t.Fatalf("GET %s: %d %v", path, code, st)
		}
		return st
	}
	waitFor(t, "two chunks of the stalled file committed", func() bool {
		return status()["progress"].(map[string]any)["line"].(float64) == 50
	})
	child.kill9()
	close(tr.stallGo)
	child.start()
	st := waitBulk(t, target, path, 2*time.Minute)
	if tr.get(func() int { return tr.matches }) != 1 || tr.get(func() int { return tr.exports }) != 1 {
		t.Errorf("kick-offs: %d $bulk-member-match, %d $davinci-data-export; want one each", tr.matches, tr.exports)
	}
	child.term()
	// Look at what the child wrote, on its database.
	fp.target = startLiveAt(t, db, targetArgs...)
	fp.checkOnce(t, st, true)
}
