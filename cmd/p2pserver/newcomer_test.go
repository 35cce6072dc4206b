package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/internal/pgtest"
	"github.com/p2pserver/p2pserver/notify/smtptest"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// TestMainRefusesWhatItCannotUse runs the binary's main (this test binary
// re-executed) with settings a newcomer gets wrong: each is refused with a
// message naming the setting and what it takes, exit status 2, before
// anything is created.
func TestMainRefusesWhatItCannotUse(t *testing.T) {
	if os.Getenv("P2P_TEST_RUN_MAIN") == "1" {
		os.Args = append([]string{"p2pserver"}, strings.Fields(os.Getenv("P2P_TEST_ARGS"))...)
		main()
		os.Exit(0)
	}
	for _, c := range []struct {
		name string
		args string
		env  []string
		want string
	}{
		{"log level in the environment", "", []string{"P2P_LOG_LEVEL=verbose"}, `-log-level: "verbose" is not a level; use debug, info, warn or error`},
		{"log level flag", "-log-level trace", nil, `-log-level: "trace" is not a level`},
		{"a stray argument", "serve", nil, `unexpected argument "serve": p2pserver takes only flags`},
		{"a stray argument after flags", "-max-body 1MiB extra", nil, `unexpected argument "extra"`},
		{"an origin without a scheme", "-cors-origins portal.example.org", nil, `-cors-origins: "portal.example.org" is not an origin`},
		{"an origin with a path", "-cors-origins https://portal.example.org/app", nil, `is not an origin`},
		// A "*" is only a whole leftmost label: anything else widens the
		// pattern past what it seems to say (https://* is every https site).
		{"a wildcard for the whole host", "-cors-origins https://*", nil, `-cors-origins: "https://*" is not an origin`},
		{"a wildcard inside the host", "-cors-origins https://portal.*.example.org", nil, `"https://portal.*.example.org" is not an origin`},
		{"a doubled wildcard", "-cors-origins https://**.example.org", nil, `"https://**.example.org" is not an origin`},
		{"two wildcard labels", "-cors-origins https://*.*.example.org", nil, `"https://*.*.example.org" is not an origin`},
		{"a wildcard port", "-cors-origins https://portal.example.org:*", nil, `"https://portal.example.org:*" is not an origin`},
		{"a base URL without a scheme", "-base-url 127.0.0.1:8080", nil, `-base-url: "127.0.0.1:8080" is not an absolute http(s) URL`},
		// An address or a database path that cannot be used is refused
		// before anything starts, naming the setting (not a listen or open
		// error after the start).
		{"an address without a port", "-addr 127.0.0.1", nil, `-addr: "127.0.0.1" is not host:port`},
		{"an address with a port past 65535", "-addr 127.0.0.1:99999", nil, `-addr: "127.0.0.1:99999" has no port number from 0 to 65535`},
		{"an address with a named port", "-addr 127.0.0.1:http", nil, `-addr: "127.0.0.1:http" has no port number`},
		{"a profiling address without a port", "-debug-addr 6060", nil, `-debug-addr: "6060" is not host:port`},
		{"a database path that is a folder", "-db .", nil, `-db: . is a folder`},
		{"a database path ending in a slash", "-db data/", nil, `-db: "data/" is not a file name`},
		// A PostgreSQL URL pgx cannot use is refused at once too, saying
		// why, never with its password.
		{"a PostgreSQL pool size that is not a number", "-db postgres://p2p:s3cret@127.0.0.1/p2p?pool_max_conns=abc", nil,
			`-db: postgres://p2p:xxxxx@127.0.0.1/p2p?pool_max_conns=abc: not a valid PostgreSQL URL: cannot parse pool_max_conns`},
		{"a PostgreSQL sslmode pgx does not know", "-db postgres://p2p:s3cret@127.0.0.1/p2p?sslmode=sometimes", nil, `not a valid PostgreSQL URL: failed to configure TLS (sslmode is invalid)`},
		{"a PostgreSQL port that is not a number", "-db postgres://p2p:s3cret@127.0.0.1:fivefour/p2p", nil, `-db: `},
	} {
		t.Run(c.name, func(t *testing.T) {
			db := filepath.Join(t.TempDir(), "data", "p2p.db")
			// A server that starts anyway is stopped, and fails the row.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestMainRefusesWhatItCannotUse$")
			cmd.Env = append(os.Environ(), "P2P_TEST_RUN_MAIN=1", "P2P_TEST_ARGS="+c.args, "P2P_DB="+db, "P2P_ADDR=127.0.0.1:0")
			cmd.Env = append(cmd.Env, c.env...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("exit %v, want status 2; stderr: %s", err, stderr.String())
			}
			if !strings.Contains(stderr.String(), c.want) {
				t.Errorf("stderr %q does not say %q", stderr.String(), c.want)
			}
			if strings.Contains(stderr.String(), "s3cret") {
				t.Errorf("stderr %q shows the database password", stderr.String())
			}
			if _, err := os.Stat(filepath.Dir(db)); !os.IsNotExist(err) {
				t.Errorf("a refused start created %s", filepath.Dir(db))
			}
		})
	}
}

// TestBaseURLFor is the rule for links when -base-url is not set: the
// address actually bound, a host name kept as given, and localhost (with a
// warning) when the server listens on every interface.
func TestBaseURLFor(t *testing.T) {
	bound := func(ip string, port int) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: port} }
	for _, c := range []struct {
		addr     string
		bound    net.Addr
		want     string
		wildcard bool
	}{
		{"127.0.0.1:0", bound("127.0.0.1", 41234), "http://127.0.0.1:41234", false},
		{"127.0.0.1:8080", bound("127.0.0.1", 8080), "http://127.0.0.1:8080", false},
		{"[::1]:0", bound("::1", 41235), "http://[::1]:41235", false},
		{"localhost:0", bound("127.0.0.1", 41236), "http://localhost:41236", false},
		{"payer.example.org:8080", bound("10.0.0.5", 8080), "http://payer.example.org:8080", false},
		{":8080", bound("::", 8080), "http://localhost:8080", true},
		{":0", bound("::", 41237), "http://localhost:41237", true},
		{"0.0.0.0:0", bound("0.0.0.0", 41238), "http://localhost:41238", true},
		{"[::]:9000", bound("::", 9000), "http://localhost:9000", true},
	} {
		got, wildcard := baseURLFor(c.addr, c.bound)
		if got != c.want || wildcard != c.wildcard {
			t.Errorf("-addr %s bound %s: %s (wildcard %v), want %s (%v)", c.addr, c.bound, got, wildcard, c.want, c.wildcard)
		}
	}
}

// syncBuffer is a log sink the test reads while the server writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// serveOnPortZero runs the server as main does with -addr addr and no
// -base-url, and returns the address it logs as bound.
func serveOnPortZero(t *testing.T, addr string) string {
	t.Helper()
	cfg, err := parseConfig([]string{"-addr", addr, "-db", filepath.Join(t.TempDir(), "p2p.db")}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.NewTextHandler(logs, nil))) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	re := regexp.MustCompile(`msg="p2pserver listening" addr=(\S+)`)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m := re.FindStringSubmatch(logs.String()); m != nil {
			return m[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server did not say where it listens: %s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLinksNameTheBoundAddress: with -addr on port 0 and no -base-url,
// Location, fullUrl and paging links name the port actually bound, not
// ":0".
func TestLinksNameTheBoundAddress(t *testing.T) {
	for _, c := range []struct{ addr, host string }{{"127.0.0.1:0", "127.0.0.1"}, {"localhost:0", "localhost"}} {
		t.Run(c.addr, func(t *testing.T) {
			bound := serveOnPortZero(t, c.addr)
			_, port, _ := net.SplitHostPort(bound)
			want := "http://" + net.JoinHostPort(c.host, port) + "/fhir/"
			resp, err := http.Post("http://"+bound+"/fhir/Patient", "application/fhir+json", strings.NewReader(`{"resourceType":"Patient"}`))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if loc := resp.Header.Get("Location"); !strings.HasPrefix(loc, want+"Patient/") {
				t.Errorf("Location %q, want it under %s", loc, want)
			}
			resp, err = http.Get("http://" + bound + "/fhir/Patient?_count=1")
			if err != nil {
				t.Fatal(err)
			}
			var b struct {
				Link  []struct{ URL string } `json:"link"`
				Entry []struct {
					FullURL string `json:"fullUrl"`
				} `json:"entry"`
			}
			err = json.NewDecoder(resp.Body).Decode(&b)
			resp.Body.Close()
			if err != nil || len(b.Link) == 0 || len(b.Entry) != 1 {
				t.Fatalf("search: %v %+v", err, b)
			}
			for _, u := range append([]string{b.Entry[0].FullURL}, b.Link[0].URL) {
				if !strings.HasPrefix(u, want) {
					t.Errorf("link %q, want it under %s", u, want)
				}
			}
		})
	}
}

// TestHomeAndDocs: GET / points a newcomer at the FHIR base, the
// CapabilityStatement, the /api documentation and the README, as JSON or
// (for a browser) HTML; /api/docs leads to the Swagger UI.
func TestHomeAndDocs(t *testing.T) {
	p := startPayer(t)
	var home map[string]string
	if st := p.call("GET", "/", "", nil, &home); st != 200 {
		t.Fatalf("GET /: %d", st)
	}
	for k, want := range map[string]string{"fhir": p.URL + "/fhir", "capabilityStatement": p.URL + "/fhir/metadata",
		"apiDocs": p.URL + "/api/docs", "openapi": p.URL + "/api/openapi.json"} {
		if home[k] != want {
			t.Errorf("%s: %q, want %q", k, home[k], want)
		}
	}
	if !strings.Contains(home["documentation"], "README") {
		t.Errorf("no pointer to the README: %v", home)
	}
	req, _ := http.NewRequest("GET", p.URL+"/", nil)
	req.Header.Set("Accept", "text/html,application/xhtml+xml")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(string(page), `href="`+p.URL+`/fhir/metadata"`) {
		t.Errorf("HTML home: %s %s", resp.Header.Get("Content-Type"), page)
	}
	resp, err = http.Get(p.URL + "/api/docs")
	if err != nil {
		t.Fatal(err)
	}
	ui, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Request.URL.Path != "/api/" || !strings.Contains(string(ui), "openapi.json") {
		t.Errorf("/api/docs: %d at %s", resp.StatusCode, resp.Request.URL)
	}
}

// TestCORS: a member portal in the browser, on an origin of -cors-origins,
// can call /fhir and /api: preflights are answered without a token, answers
// carry Access-Control-Allow-Origin and expose Location and ETag; other
// origins get no CORS headers; the CapabilityStatement says cors (Fetch
// standard, CORS protocol; FHIR R4 CapabilityStatement.rest.security.cors).
func TestCORS(t *testing.T) {
	const portal = "https://portal.payer-b.example"
	p := startPayer(t, "-cors-origins", portal+", https://*.members.example", "-trusted-issuers", "https://issuer.invalid", "-admin-token", testAdmin)
	closed := startPayer(t)

	do := func(p *payer, method, path, origin string, h map[string]string, body string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, p.URL+path, strings.NewReader(body))
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	preflight := map[string]string{"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type, if-none-exist"}
	for _, c := range []struct {
		name   string
		p      *payer
		origin string
		allow  bool
	}{
		{"listed origin", p, portal, true},
		{"wildcard subdomain", p, "https://app.members.example", true},
		{"other origin", p, "https://evil.example", false},
		{"server without -cors-origins", closed, portal, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, path := range []string{"/fhir/Task", "/api/oidc_servers"} {
				resp := do(c.p, "OPTIONS", path, c.origin, preflight, "")
				got := resp.Header.Get("Access-Control-Allow-Origin")
				if !c.allow {
					if got != "" {
						t.Errorf("preflight %s from %s allowed: %q", path, c.origin, got)
					}
					continue
				}
				if resp.StatusCode >= 300 || got != c.origin {
					t.Errorf("preflight %s: %d, Allow-Origin %q", path, resp.StatusCode, got)
				}
				allowed := strings.ToLower(resp.Header.Get("Access-Control-Allow-Headers"))
				for _, h := range []string{"authorization", "content-type", "if-none-exist"} {
					if !strings.Contains(allowed, h) {
						t.Errorf("preflight %s: header %s not allowed (%q)", path, h, allowed)
					}
				}
				if !strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "POST") {
					t.Errorf("preflight %s: methods %q", path, resp.Header.Get("Access-Control-Allow-Methods"))
				}
			}
			resp := do(c.p, "POST", "/fhir/Patient", c.origin, map[string]string{"Authorization": "Bearer " + testAdmin, "Content-Type": "application/fhir+json"}, `{"resourceType":"Patient"}`)
			if resp.StatusCode != 201 {
				t.Fatalf("create: %d", resp.StatusCode)
			}
			got := resp.Header.Get("Access-Control-Allow-Origin")
			exposed := strings.ToLower(strings.Join(resp.Header.Values("Access-Control-Expose-Headers"), ","))
			if c.allow && (got != c.origin || !strings.Contains(exposed, "location") || !strings.Contains(exposed, "etag")) {
				t.Errorf("create from %s: Allow-Origin %q, Expose-Headers %q", c.origin, got, exposed)
			}
			if !c.allow && got != "" {
				t.Errorf("create from %s: Allow-Origin %q", c.origin, got)
			}
		})
	}
	for _, c := range []struct {
		p    *payer
		cors bool
	}{{p, true}, {closed, false}} {
		var cs struct {
			Rest []struct {
				Security *struct {
					Cors bool `json:"cors"`
				} `json:"security"`
			} `json:"rest"`
		}
		c.p.call("GET", "/fhir/metadata", "", nil, &cs)
		if len(cs.Rest) != 1 || cs.Rest[0].Security == nil || cs.Rest[0].Security.Cors != c.cors {
			t.Errorf("CapabilityStatement rest.security.cors: %+v, want %v", cs.Rest, c.cors)
		}
	}
}

// TestAPayerSideFailureDoesNotUseUpTheRequest runs the exchange between two
// wired p2pservers with mail: a job that fails for a cause on the payers'
// side (a token minted for another audience) leaves the member's add-payer
// Task in progress, emails nobody a failure, and a new job for the same
// Task completes it; the Task's output lists both attempts. A failure only
// the member can remove (their refresh token revoked) fails another
// member's request and tells that member to sign in again.
func TestAPayerSideFailureDoesNotUseUpTheRequest(t *testing.T) {
	idp := oidctest.New(t)
	idp.AddClient("payer-b", "payer-b-secret")
	mail := smtptest.New(t, smtptest.Options{})
	source := startPayer(t, "-admin-token", testAdmin, "-trusted-issuers", idp.Issuer())
	target := startPayer(t, "-admin-token", testAdmin, "-backoffice-token", testBackoffice, "-secret-key", testSecretKey,
		"-smtp-url", mail.URL(), "-mail-from", "Payer B <p2p@payer-b.example>", "-notify-admins", "admins@payer-b.example")

	for _, m := range []string{"alice", "bob"} {
		if st := source.call("PUT", "/fhir/Patient/src-"+m, testAdmin, `{"resourceType":"Patient","id":"src-`+m+`"}`, nil); st != 201 {
			t.Fatalf("source patient: %d", st)
		}
		if st := source.call("POST", "/fhir/Observation", testAdmin, `{"resourceType":"Observation","status":"final","code":{"text":"weight"},"subject":{"reference":"Patient/src-`+m+`"}}`, nil); st != 201 {
			t.Fatalf("source observation: %d", st)
		}
		if st := target.call("PUT", "/fhir/Patient/"+m, "", `{"resourceType":"Patient","id":"`+m+`"}`, nil); st != 201 {
			t.Fatalf("member: %d", st)
		}
	}
	tasks := map[string]string{}
	for _, m := range []string{"alice", "bob"} {
		var task map[string]any
		if st := target.call("POST", "/fhir/Task", "", addPayerTask(m, m+"@example.org"), &task); st != 201 {
			t.Fatalf("Task: %d %v", st, task)
		}
		tasks[m] = task["id"].(string)
	}
	mail.Wait(4, 20*time.Second) // each request told to the admins and the member
	var def map[string]any
	if st := target.call("POST", "/api/oidc_servers", testAdmin, map[string]any{"name": "Source Payer A", "issuer": idp.Issuer(),
		"clientId": "payer-b", "clientSecret": "payer-b-secret", "fhirEndpoint": source.URL + "/fhir"}, &def); st != 201 {
		t.Fatalf("definition: %d %v", st, def)
	}
	jobs := fmt.Sprintf("/api/oidc_servers/%v/batch_job", def["pid"])
	run := func(member, access, refresh string) map[string]any {
		t.Helper()
		var job map[string]any
		if st := target.call("POST", jobs, testBackoffice, map[string]any{
			"sourcePayer": map[string]any{"oidcToken": access, "oidcRefreshToken": refresh, "fhirBundleRequest": "Patient/src-" + member + "/$everything", "patientId": "src-" + member},
			"targetPayer": map[string]any{"patientId": member, "organizationId": "PAYRB"}, "taskId": tasks[member]}, &job); st != 202 {
			t.Fatalf("start job: %d %v", st, job)
		}
		path := fmt.Sprintf("%s/%v", jobs, job["batchJobId"])
		deadline := time.Now().Add(60 * time.Second)
		for job["batchStatus"] != "COMPLETED" && job["batchStatus"] != "FAILED" {
			if time.Now().After(deadline) {
				t.Fatalf("job still %v", job["batchStatus"])
			}
			time.Sleep(50 * time.Millisecond)
			target.call("GET", path, testBackoffice, nil, &job)
		}
		return job
	}
	task := func(member string) map[string]any {
		var m map[string]any
		target.call("GET", "/fhir/Task/"+tasks[member], testAdmin, nil, &m)
		return m
	}
	mint := func(member string, aud string) (string, string) {
		tok, err := idp.MintFor([]string{aud}, oidctest.Grant{ClientID: "payer-b", Patient: "src-" + member})
		if err != nil {
			t.Fatal(err)
		}
		return tok.AccessToken, tok.RefreshToken
	}

	// The portal asked for the wrong audience: the payers' mistake.
	access, refresh := mint("alice", "https://elsewhere.example/fhir")
	first := run("alice", access, refresh)
	if first["batchStatus"] != "FAILED" || first["finalFailure"] == true || !strings.Contains(fmt.Sprint(first["failureReason"]), "meant for another server") {
		t.Fatalf("first job: %v", first)
	}
	if tk := task("alice"); tk["status"] != "in-progress" {
		t.Fatalf("the Task after a payer-side failure: %v %v", tk["status"], tk["statusReason"])
	}
	access, refresh = mint("alice", source.URL+"/fhir")
	if second := run("alice", access, refresh); second["batchStatus"] != "COMPLETED" {
		t.Fatalf("second job: %v", second)
	}
	tk := task("alice")
	out := fmt.Sprint(tk["output"])
	if tk["status"] != "completed" || !strings.Contains(out, fmt.Sprintf("batch job %v (", first["batchJobId"])) || !strings.Contains(out, "FAILED") || !strings.Contains(out, "COMPLETED") {
		t.Errorf("Task %v with attempts %s", tk["status"], out)
	}

	// Bob's authorization is revoked: only Bob can fix that.
	expiredTok, err := idp.MintFor([]string{source.URL + "/fhir"}, oidctest.Grant{ClientID: "payer-b", Patient: "src-bob", AccessTokenLifetime: -time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	idp.RevokeRefreshToken(expiredTok.RefreshToken)
	if job := run("bob", expiredTok.AccessToken, expiredTok.RefreshToken); job["finalFailure"] != true {
		t.Fatalf("bob's job: %v", job)
	}
	if tk := task("bob"); tk["status"] != "failed" {
		t.Errorf("bob's Task: %v", tk["status"])
	}

	// Alice hears that her records arrived, Bob that he must sign in
	// again; nobody hears of Alice's failed first attempt.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var aliceDone, bobFailed bool
		for _, m := range mail.Messages() {
			to := strings.Join(m.To, ",")
			aliceDone = aliceDone || (to == "alice@example.org" && strings.Contains(m.Text, "have been copied"))
			bobFailed = bobFailed || (to == "bob@example.org" && strings.Contains(m.Text, "sign in at Source Payer A again"))
		}
		if aliceDone && bobFailed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("emails: alice done %v, bob failed %v", aliceDone, bobFailed)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, m := range mail.Messages() {
		if strings.Contains(m.Text, "could not") && strings.Contains(strings.Join(m.To, ","), "alice") {
			t.Errorf("alice was told of a failure: %s\n%s", m.Subject, m.Text)
		}
	}
	var history map[string]any
	target.call("GET", "/fhir/Task/"+tasks["alice"]+"/_history", testAdmin, nil, &history)
	if strings.Contains(fmt.Sprint(history), "status:failed") {
		t.Errorf("alice's Task was failed at some point: %v", history)
	}
}

// TestHomeAnswersHEADAndWeights: / and /healthz answer HEAD as GET without
// a body (RFC 9110 section 9.1: every general-purpose server supports GET
// and HEAD), and / follows the Accept weights (RFC 9110 section 12.5.1,
// q=0 is "not acceptable"): HTML only when text/html weighs at least as
// much as JSON.
func TestHomeAnswersHEADAndWeights(t *testing.T) {
	p := startPayer(t)
	for _, c := range []struct {
		method, path, accept string
		status               int
		contentType          string // prefix; "" for HEAD's JSON
	}{
		{"HEAD", "/", "", 200, "application/json"},
		{"HEAD", "/", "text/html", 200, "text/html"},
		{"HEAD", "/healthz", "", 200, "application/json"},
		{"GET", "/", "text/html;q=0, application/json", 200, "application/json"},
		{"GET", "/", "text/html;q=0.1, application/json", 200, "application/json"},
		{"GET", "/", "application/json;q=0.5, text/html", 200, "text/html"},
		{"GET", "/", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", 200, "text/html"},
		{"GET", "/", "text/html;q=0.5, */*", 200, "application/json"},
		{"GET", "/", "*/*", 200, "application/json"},
	} {
		req, _ := http.NewRequest(c.method, p.URL+c.path, nil)
		if c.accept != "" {
			req.Header.Set("Accept", c.accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.status || !strings.HasPrefix(resp.Header.Get("Content-Type"), c.contentType) {
			t.Errorf("%s %s (Accept %q): %d %s, want %d %s", c.method, c.path, c.accept, resp.StatusCode, resp.Header.Get("Content-Type"), c.status, c.contentType)
		}
		if c.method == "HEAD" && len(body) != 0 {
			t.Errorf("HEAD %s sent a body: %q", c.path, body)
		}
	}
}

// TestPostgresWithoutSecretKeyWarns: processes on one PostgreSQL database
// answer each other's paging links only with one -secret-key (the links'
// cursors are sealed with it); a process started there without one says
// so at start, and one with a key or on a bbolt file does not.
func TestPostgresWithoutSecretKeyWarns(t *testing.T) {
	const warning = "no -secret-key: the paging links this process makes"
	for _, c := range []struct {
		name string
		args []string
		warn bool
	}{
		{"postgres without a key", []string{"-db", pgtest.Database(t)}, true},
		{"postgres with a key", []string{"-db", pgtest.Database(t), "-secret-key", testSecretKey}, false},
		{"bbolt without a key", []string{"-db", filepath.Join(t.TempDir(), "p2p.db")}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := parseConfig(append([]string{"-addr", "127.0.0.1:0", "-export-dir", t.TempDir()}, c.args...), func(string) string { return "" })
			if err != nil {
				t.Fatal(err)
			}
			logs := &syncBuffer{}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- run(ctx, cfg, slog.New(slog.NewTextHandler(logs, nil))) }()
			waitFor(t, "the server to listen", func() bool { return strings.Contains(logs.String(), "p2pserver listening") })
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("shutdown: %v", err)
			}
			if got := strings.Contains(logs.String(), warning); got != c.warn {
				t.Errorf("warned %v, want %v; logs:\n%s", got, c.warn, logs.String())
			}
		})
	}
}

// TestMainHelp: -h, for the server and for migrate, is what was asked
// for, not an error: exit status 0, the flags listed, the server's help
// naming the migrate command too, and no "help requested" error line.
func TestMainHelp(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"-h"}, []string{"p2pserver [flags]", "p2pserver migrate -from", "-max-body"}},
		{[]string{"-help"}, []string{"p2pserver migrate -from"}},
		{[]string{"migrate", "-h"}, []string{"p2pserver migrate -from", "-quiet"}},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			cmd := asProgram("p2pserver", c.args...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("exit %v, want status 0; output:\n%s", err, out)
			}
			for _, w := range c.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("the help does not say %q:\n%s", w, out)
				}
			}
			if strings.Contains(string(out), "help requested") {
				t.Errorf("the help ends with an error:\n%s", out)
			}
		})
	}
}
