package main

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/internal/demo"
	"github.com/p2pserver/p2pserver/internal/devidp"
	td "github.com/p2pserver/p2pserver/internal/testdata"
)

// runAsEnv makes this test binary run as one of the demo's programs
// instead of the tests: the demo test starts real child processes
// without building binaries first.
const runAsEnv = "P2PSERVER_TEST_RUN_AS"

func TestMain(m *testing.M) {
	switch os.Getenv(runAsEnv) {
	case "p2pserver":
		main()
		os.Exit(0)
	case "p2p-devidp":
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := devidp.Command(ctx, os.Args[1:], os.Stdout)
		stop()
		if err != nil {
			os.Stderr.WriteString("p2p-devidp: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// asProgram runs this test binary as program (see TestMain).
func asProgram(program string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runAsEnv+"="+program)
	return cmd
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestDemoExchange runs `make demo`'s exchange (internal/demo.Run) with
// its parts as real processes: two p2pservers and the development OpenID
// provider, this binary standing in for the built ones. The member's data
// must arrive with Provenance, be in the member's $everything, the Task
// must complete and the member and admins be emailed; the printout shows
// each call.
func TestDemoExchange(t *testing.T) {
	var out lockedBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := demo.Run(ctx, demo.Config{Command: asProgram, Synthea: td.Path("synthea"), WorkDir: t.TempDir(), Out: &out})
	if testing.Verbose() || err != nil {
		t.Log("\n" + out.String())
	}
	if err != nil {
		t.Fatalf("the demo failed: %v", err)
	}
	printed := out.String()
	if !strings.Contains(printed, "\nRESULT: the exchange succeeded in ") {
		t.Errorf("no success line at the end")
	}
	if res.Written["ExplanationOfBenefit"] == 0 || res.Provenance == 0 || res.Everything["ExplanationOfBenefit"] != res.Written["ExplanationOfBenefit"] {
		t.Errorf("brought over %v with %d Provenance; $everything %v", res.Written, res.Provenance, res.Everything)
	}
	member := strings.Join(res.Emails["angelic.mueller@example.org"], " | ")
	admins := strings.Join(res.Emails["admins@payer-b.example"], " | ")
	if !strings.Contains(member, "we received it") || !strings.Contains(member, "done") || !strings.Contains(admins, "New add-payer request") {
		t.Errorf("emails to the member: %s; to the admins: %s", member, admins)
	}
	// Each step is printed as the call a payer's engineer makes.
	for _, call := range []string{
		`> POST http://127.0.0.1:\d+/fhir/Task `,
		`> POST http://127.0.0.1:\d+/api/oidc_servers `,
		`> GET http://127.0.0.1:\d+/authorize\?\S*code_challenge_method=S256`,
		`> POST http://127.0.0.1:\d+/login `,
		`> POST http://127.0.0.1:\d+/oauth/token `,
		`> POST http://127.0.0.1:\d+/api/oidc_servers/\d+/batch_job `,
		`< 200 OK   batchStatus=COMPLETED`,
		`> GET http://127.0.0.1:\d+/fhir/Patient/member-1/\$everything`,
	} {
		if !regexp.MustCompile(call).MatchString(printed) {
			t.Errorf("the printout lacks %s", call)
		}
	}
	// Secrets are not printed.
	if strings.Contains(printed, "angelic-demo-password:") || strings.Contains(printed, "payer-b-secret\"") {
		t.Error("a password or client secret is printed")
	}
}

// TestDemoFailureStopsEverything: when a step fails the demo says so on
// its last line, and no part it started is left running.
func TestDemoFailureStopsEverything(t *testing.T) {
	var out lockedBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := demo.Run(ctx, demo.Config{Command: asProgram, Synthea: t.TempDir(), WorkDir: t.TempDir(), Out: &out})
	printed := out.String()
	if err == nil || !strings.Contains(err.Error(), "Synthea bundle") {
		t.Fatalf("with no Synthea bundles: %v", err)
	}
	if !regexp.MustCompile(`\nRESULT: the exchange FAILED after \S+: the Synthea bundle`).MatchString(printed) {
		t.Errorf("no failure line: %s", printed)
	}
	servers := regexp.MustCompile(`p2pserver -addr (127\.0\.0\.1:\d+)`).FindAllStringSubmatch(printed, -1)
	if len(servers) != 2 {
		t.Fatalf("the two servers were not started before the failing step: %s", printed)
	}
	for _, s := range servers {
		if resp, err := http.Get("http://" + s[1] + "/healthz"); err == nil {
			resp.Body.Close()
			t.Errorf("the p2pserver on %s still answers after the demo ended", s[1])
		}
	}
}
