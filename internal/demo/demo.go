// Package demo runs the payer-to-payer exchange end to end on one machine,
// with real parts, and prints every step as the HTTP call a payer's
// engineer would make: cmd/p2p-demo (`make demo`) runs it with the built
// binaries, and a test of cmd/p2pserver runs the same Run, so the demo
// cannot rot.
//
// The parts: an SMTP sink (internal/smtpsink, in this process), the old
// payer's p2pserver (the source, trusting the OpenID provider's tokens)
// loaded with Synthea members through its FHIR API, the development
// OpenID provider (cmd/p2p-devidp) with the members' accounts, and the
// new payer's p2pserver (the target). The steps: the member asks the new
// payer's portal to bring their data over (the add-payer Task from
// examples/), an admin registers the old payer (its OIDC server
// definition), the member authorizes the new payer at the old payer's
// login page (the authorization-code flow with PKCE, driven over HTTP as
// a browser would), the back office starts the batch job with the
// member's tokens and polls it, and the result is read back: resources
// and Provenance at the target, the member's $everything, the Task, the
// emails.
package demo

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/examples"
	"github.com/p2pserver/p2pserver/internal/smtpsink"
)

// Config says how to run the parts and where things are.
type Config struct {
	// Command returns the command running program ("p2pserver" or
	// "p2p-devidp") with args. Its Env, when set, is the base environment
	// (P2P_* variables are removed from it).
	Command func(program string, args ...string) *exec.Cmd
	// Synthea is the folder of Synthea patient bundles
	// (testdata/synthea).
	Synthea string
	// WorkDir holds the databases and the parts' logs.
	WorkDir string
	// Out receives the steps.
	Out io.Writer
}

// Members the demo loads at the old payer, by Synthea file name prefix:
// the first is the member whose data moves; the others are members whose
// data must stay where it is.
var (
	member = synthea{prefix: "Angelic_Mueller_", family: "Mueller", given: "Angelic", username: "angelic", password: "angelic-demo-password"}
	others = []synthea{
		{prefix: "Barney_Abbott_", family: "Abbott", given: "Barney", username: "barney", password: "barney-demo-password"},
		{prefix: "Luigi_Wiegand_", family: "Wiegand", given: "Luigi", username: "luigi", password: "luigi-demo-password"},
	}
)

type synthea struct {
	prefix, family, given, username, password string
	id                                        string // Patient id at the old payer, once loaded
}

// Result is what the exchange brought over, for the last line and tests.
type Result struct {
	// Written counts the resources the job stored at the new payer, by type.
	Written map[string]int
	// Provenance counts the Provenance the job wrote (one per page).
	Provenance int
	// Everything counts the member's $everything at the new payer, by type.
	Everything map[string]int
	// Emails are the subjects of the emails received, by recipient.
	Emails map[string][]string
	// Took is how long the run took.
	Took time.Duration
}

// Run carries out the exchange, prints it to cfg.Out and ends with one
// line saying whether it succeeded. Every child process is stopped before
// it returns, on success, failure or ctx ending.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	began := time.Now()
	d := &run{cfg: cfg, out: cfg.Out, web: newWeb(cfg.Out), began: began, res: &Result{Emails: map[string][]string{}}}
	err := d.run(ctx)
	d.parts.stopAll(15 * time.Second)
	if d.sink != nil {
		d.sink.Stop()
	}
	d.res.Took = time.Since(began).Round(100 * time.Millisecond)
	fmt.Fprintln(d.out)
	if err != nil {
		fmt.Fprintf(d.out, "RESULT: the exchange FAILED after %s: %v\n", d.res.Took, err)
		return d.res, err
	}
	total := 0
	for _, n := range d.res.Written {
		total += n
	}
	fmt.Fprintf(d.out, "RESULT: the exchange succeeded in %s: %d resources of %d types and %d Provenance brought over for member-1; $everything shows %d; %d emails sent.\n",
		d.res.Took, total, len(d.res.Written), d.res.Provenance, sum(d.res.Everything), countMails(d.res.Emails))
	return d.res, nil
}

// run is one demo run's state.
type run struct {
	cfg   Config
	out   io.Writer
	web   *web
	parts parts
	sink  *smtpsink.Server
	began time.Time
	res   *Result
	step  int

	source, target, idp                       string // base URLs
	sourceAdmin, targetAdmin, backoffice, key string
}

func (d *run) title(format string, args ...any) {
	d.step++
	fmt.Fprintf(d.out, "\n== %d. %s\n", d.step, fmt.Sprintf(format, args...))
}

func (d *run) say(format string, args ...any) {
	fmt.Fprintf(d.out, "   "+format+"\n", args...)
}

func (d *run) run(ctx context.Context) error {
	if err := os.MkdirAll(d.cfg.WorkDir, 0o700); err != nil {
		return err
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	d.source = fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	d.target = fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	d.idp = fmt.Sprintf("http://127.0.0.1:%d", ports[2])
	d.sourceAdmin, d.targetAdmin, d.backoffice = secret(24), secret(24), secret(24)
	d.key = base64.StdEncoding.EncodeToString(randomBytes(32))

	d.title("The parts, each on a free port of 127.0.0.1 (work folder %s)", d.cfg.WorkDir)
	if d.sink, err = smtpsink.Start(smtpsink.Options{Addr: "127.0.0.1:0"}); err != nil {
		return err
	}
	d.say("SMTP sink              %s (keeps what p2pserver sends, delivers nothing)", d.sink.URL())
	if err := d.startSource(ctx); err != nil {
		return err
	}
	if err := d.startTarget(ctx); err != nil {
		return err
	}
	if err := d.loadSource(ctx); err != nil {
		return err
	}
	if err := d.startIDP(ctx); err != nil {
		return err
	}
	taskID, err := d.memberAsks(ctx)
	if err != nil {
		return err
	}
	pid, def, err := d.adminRegisters(ctx)
	if err != nil {
		return err
	}
	tokens, err := d.memberAuthorizes(ctx, pid, def)
	if err != nil {
		return err
	}
	job, err := d.backOfficeRuns(ctx, pid, tokens, taskID)
	if err != nil {
		return err
	}
	return d.results(ctx, taskID, job)
}

func (d *run) startSource(ctx context.Context) error {
	args := []string{"-addr", strings.TrimPrefix(d.source, "http://"), "-db", filepath.Join(d.cfg.WorkDir, "source.db"),
		"-trusted-issuers", d.idp, "-organization-name", "Source Payer A", "-organization-id", "PAYRA", "-log-level", "warn"}
	d.say("old payer (source)     p2pserver %s", strings.Join(quote(args), " "))
	d.say("                       with P2P_ADMIN_TOKEN in its environment; /fhir needs a token from %s", d.idp)
	p, err := d.parts.start(ctx, &d.cfg, "source", "p2pserver", []string{"P2P_ADMIN_TOKEN=" + d.sourceAdmin}, args...)
	if err != nil {
		return err
	}
	return p.waitReady(ctx, d.source+"/healthz", 60*time.Second)
}

func (d *run) startTarget(ctx context.Context) error {
	args := []string{"-addr", strings.TrimPrefix(d.target, "http://"), "-db", filepath.Join(d.cfg.WorkDir, "target.db"),
		"-smtp-url", d.sink.URL(), "-mail-from", "Payer B <p2p@payer-b.example>", "-notify-admins", "admins@payer-b.example",
		"-mdm-identifier-system", "urn:payer-a:member-id", "-organization-name", "Payer B", "-organization-id", "PAYRB", "-log-level", "warn"}
	d.say("new payer (target)     p2pserver %s", strings.Join(quote(args), " "))
	d.say("                       with P2P_ADMIN_TOKEN, P2P_BACKOFFICE_TOKEN and P2P_SECRET_KEY in its environment")
	p, err := d.parts.start(ctx, &d.cfg, "target", "p2pserver",
		[]string{"P2P_ADMIN_TOKEN=" + d.targetAdmin, "P2P_BACKOFFICE_TOKEN=" + d.backoffice, "P2P_SECRET_KEY=" + d.key}, args...)
	if err != nil {
		return err
	}
	return p.waitReady(ctx, d.target+"/healthz", 60*time.Second)
}

// loadSource loads the Synthea members into the old payer through its
// FHIR API and finds their Patient ids.
func (d *run) loadSource(ctx context.Context) error {
	d.title("The old payer holds its members' records (Synthea bundles, loaded through its FHIR API)")
	all := append([]*synthea{&member}, ptrs(others)...)
	for _, m := range all {
		files, _ := filepath.Glob(filepath.Join(d.cfg.Synthea, m.prefix+"*.json"))
		if len(files) != 1 {
			return fmt.Errorf("the Synthea bundle %s*.json is not in %s (run from the repository's top folder, or give -synthea)", m.prefix, d.cfg.Synthea)
		}
		raw, err := os.ReadFile(files[0])
		if err != nil {
			return err
		}
		a, err := d.web.do(ctx, req{method: "POST", url: d.source + "/fhir", as: "admin token", token: d.sourceAdmin, body: raw,
			what: "transaction Bundle " + filepath.Base(files[0])})
		if err != nil {
			return err
		}
		if err := expect(a, 200, "loading "+filepath.Base(files[0])); err != nil {
			return err
		}
		entries, _ := a.json["entry"].([]any)
		d.web.show(a, fmt.Sprintf("%s, %d entries created", str(a.json, "type"), len(entries)))
		q := url.Values{"family": {m.family}, "given": {m.given}}
		a, err = d.web.do(ctx, req{method: "GET", url: d.source + "/fhir/Patient?" + q.Encode(), as: "admin token", token: d.sourceAdmin})
		if err != nil {
			return err
		}
		if err := expect(a, 200, "finding "+m.given+" "+m.family); err != nil {
			return err
		}
		found, _ := a.json["entry"].([]any)
		if len(found) != 1 {
			return fmt.Errorf("%d Patients named %s %s at the old payer, want 1", len(found), m.given, m.family)
		}
		m.id = str(found[0].(map[string]any), "resource", "id")
		d.web.show(a, "Patient/"+m.id+" ("+m.given+" "+m.family+")")
	}
	return nil
}

func ptrs(s []synthea) []*synthea {
	out := make([]*synthea, len(s))
	for i := range s {
		out[i] = &s[i]
	}
	return out
}

// startIDP starts the old payer's OpenID provider with the members'
// accounts, bound to their Patient ids, and the new payer's portal as its
// client.
func (d *run) startIDP(ctx context.Context) error {
	d.title("The old payer's OpenID provider knows its members and the new payer's portal")
	args := []string{"-addr", strings.TrimPrefix(d.idp, "http://"), "-client", "payer-b:payer-b-secret:" + d.idp + "/code"}
	for _, m := range append([]*synthea{&member}, ptrs(others)...) {
		args = append(args, "-member", m.username+":"+m.password+":"+m.id+":"+m.given+" "+m.family)
	}
	shown := make([]string, len(args))
	for i, a := range args {
		shown[i] = regexp.MustCompile(`:[a-z]+-demo-password:`).ReplaceAllString(a, ":<password>:")
	}
	d.say("p2p-devidp %s", strings.Join(quote(shown), " "))
	d.say("members: %s / %s (Patient/%s) logs in below; %s and %s must stay where they are", member.username, member.password, member.id, others[0].username, others[1].username)
	p, err := d.parts.start(ctx, &d.cfg, "devidp", "p2p-devidp", nil, args...)
	if err != nil {
		return err
	}
	return p.waitReady(ctx, d.idp+"/.well-known/openid-configuration", 30*time.Second)
}

// memberAsks: the member is enrolled at the new payer and asks, in its
// portal, to bring their data over: the add-payer Task.
func (d *run) memberAsks(ctx context.Context) (string, error) {
	d.title("The member, enrolled at the new payer, asks its portal to bring their data over")
	body, err := examples.Read("patient.json")
	if err != nil {
		return "", err
	}
	a, err := d.web.do(ctx, req{method: "PUT", url: d.target + "/fhir/Patient/member-1", body: body, what: "examples/patient.json"})
	if err != nil {
		return "", err
	}
	if err := expect(a, 201, "enrolling the member"); err != nil {
		return "", err
	}
	d.web.show(a, "Patient/"+str(a.json, "id"), "Location "+a.header.Get("Location"))

	body, err = examples.Read("add-payer-task.json")
	if err != nil {
		return "", err
	}
	a, err = d.web.do(ctx, req{method: "POST", url: d.target + "/fhir/Task", body: body, what: "examples/add-payer-task.json: code p2p-request-add-provider-id, requester Patient/member-1, owner Organization/PAYRA"})
	if err != nil {
		return "", err
	}
	if err := expect(a, 201, "the add-payer Task"); err != nil {
		return "", err
	}
	id := str(a.json, "id")
	d.web.show(a, "Task/"+id, "status="+str(a.json, "status"), "authoredOn="+str(a.json, "authoredOn"))
	d.say("the server's default Subscription emails the admins and the member (see the end)")
	return id, nil
}

// adminRegisters: an admin of the new payer registers the old payer's
// OIDC server definition; the portal reads it.
func (d *run) adminRegisters(ctx context.Context) (string, map[string]any, error) {
	d.title("An admin of the new payer registers the old payer (its OIDC server definition)")
	body, err := examples.Read("oidc-server.json")
	if err != nil {
		return "", nil, err
	}
	body = []byte(strings.NewReplacer("http://127.0.0.1:8081", d.source, "http://127.0.0.1:8090", d.idp).Replace(string(body)))
	a, err := d.web.do(ctx, req{method: "POST", url: d.target + "/api/oidc_servers", as: "admin token", token: d.targetAdmin, body: body,
		what: "examples/oidc-server.json with this run's addresses"})
	if err != nil {
		return "", nil, err
	}
	if err := expect(a, 201, "registering the old payer"); err != nil {
		return "", nil, err
	}
	pid := str(a.json, "pid")
	d.web.show(a, "pid="+pid, "issuer="+str(a.json, "issuer"), "hasClientSecret="+str(a.json, "hasClientSecret"))

	d.title("The portal lists the source payers and reads the one the member picks")
	a, err = d.web.do(ctx, req{method: "GET", url: d.target + "/api/oidc_servers"})
	if err != nil {
		return "", nil, err
	}
	if err := expect(a, 200, "listing the source payers"); err != nil {
		return "", nil, err
	}
	d.web.show(a, strings.TrimSpace(string(a.body)))
	a, err = d.web.do(ctx, req{method: "GET", url: d.target + "/api/oidc_servers/" + pid})
	if err != nil {
		return "", nil, err
	}
	if err := expect(a, 200, "reading the definition"); err != nil {
		return "", nil, err
	}
	if strings.Contains(string(a.body), "payer-b-secret") {
		return "", nil, errors.New("the definition's GET shows the client secret")
	}
	d.web.show(a, "clientId="+str(a.json, "clientId"), "scopes="+str(a.json, "scopes"), "authWellKnown="+str(a.json, "authWellKnown"),
		"fhirEndpoint="+str(a.json, "fhirEndpoint"), "(no secret)")
	return pid, a.json, nil
}

// tokens are the member's tokens the portal got from the old payer.
type tokens struct {
	access, refresh, patient string
}

// memberAuthorizes runs the authorization-code flow with PKCE: the portal
// sends the member's browser to the old payer's authorization endpoint,
// the member logs in, the browser comes back with a code, and the portal
// exchanges it for the member's tokens.
func (d *run) memberAuthorizes(ctx context.Context, pid string, def map[string]any) (*tokens, error) {
	d.title("The member authorizes the new payer at the old payer (authorization code with PKCE)")
	if err := d.smartConfiguration(ctx, str(def, "fhirEndpoint")); err != nil {
		return nil, err
	}
	a, err := d.web.do(ctx, req{method: "GET", url: str(def, "authWellKnown"), as: "the portal"})
	if err != nil {
		return nil, err
	}
	if err := expect(a, 200, "OpenID discovery"); err != nil {
		return nil, err
	}
	authz, tokenURL := str(a.json, "authorization_endpoint"), str(a.json, "token_endpoint")
	d.web.show(a, "authorization_endpoint="+authz, "token_endpoint="+tokenURL)

	verifier := secret(32)
	sum := sha256.Sum256([]byte(verifier))
	state := secret(8)
	redirect := d.idp + "/code"
	q := url.Values{
		"response_type": {str(def, "responseType")}, "client_id": {str(def, "clientId")}, "redirect_uri": {redirect},
		"scope": {str(def, "scopes")}, "state": {state}, "aud": {str(def, "fhirEndpoint")},
		"code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])}, "code_challenge_method": {"S256"},
	}
	a, err = d.web.do(ctx, req{method: "GET", url: authz + "?" + q.Encode(), as: "the member's browser, sent by the portal"})
	if err != nil {
		return nil, err
	}
	if err := expect(a, 302, "the authorization request"); err != nil {
		return nil, err
	}
	login := a.header.Get("Location")
	d.web.show(a, "Location "+login)
	a, err = d.web.do(ctx, req{method: "GET", url: login, as: "the member's browser"})
	if err != nil {
		return nil, err
	}
	if err := expect(a, 200, "the login page"); err != nil {
		return nil, err
	}
	m := regexp.MustCompile(`name="authRequestID" value="([^"]+)"`).FindStringSubmatch(string(a.body))
	if m == nil {
		return nil, errors.New("the login page has no form")
	}
	d.web.show(a, "the login form")
	a, err = d.web.do(ctx, req{method: "POST", url: strings.SplitN(login, "?", 2)[0], as: "the member's browser",
		form: url.Values{"authRequestID": {m[1]}, "username": {member.username}, "password": {member.password}},
		what: "username=" + member.username + "&password=…"})
	if err != nil {
		return nil, err
	}
	if err := expect(a, 302, "logging in"); err != nil {
		return nil, err
	}
	callback := a.header.Get("Location")
	d.web.show(a, "Location "+callback)
	a, err = d.web.do(ctx, req{method: "GET", url: callback, as: "the member's browser"})
	if err != nil {
		return nil, err
	}
	if err := expect(a, 302, "the authorization callback"); err != nil {
		return nil, err
	}
	back, err := url.Parse(a.header.Get("Location"))
	if err != nil {
		return nil, err
	}
	d.web.show(a, "Location "+redirect+"?code=…&state=…")
	if back.Query().Get("state") != state || back.Query().Get("code") == "" {
		return nil, fmt.Errorf("the browser came back with %s, want a code and state %s", back.Redacted(), state)
	}

	a, err = d.web.do(ctx, req{method: "POST", url: tokenURL, as: "the portal, HTTP Basic payer-b:<client secret>",
		basic: [2]string{str(def, "clientId"), "payer-b-secret"},
		form:  url.Values{"grant_type": {"authorization_code"}, "code": {back.Query().Get("code")}, "redirect_uri": {redirect}, "code_verifier": {verifier}},
		what:  "grant_type=authorization_code&code=…&redirect_uri=…&code_verifier=…"})
	if err != nil {
		return nil, err
	}
	if err := expect(a, 200, "the code exchange"); err != nil {
		return nil, err
	}
	t := &tokens{access: str(a.json, "access_token"), refresh: str(a.json, "refresh_token"), patient: str(a.json, "patient")}
	claims := jwtClaims(t.access)
	d.web.show(a, "access_token="+short(t.access), "refresh_token="+short(t.refresh), "patient="+t.patient, "expires_in="+str(a.json, "expires_in"))
	d.say("the access token is a JWT: iss=%s aud=%v patient=%v scope=%q", str(claims, "iss"), claims["aud"], claims["patient"], str(claims, "scope"))
	if t.patient != member.id || t.refresh == "" {
		return nil, fmt.Errorf("the token response has patient %q and a refresh token %v, want patient %s and one", t.patient, t.refresh != "", member.id)
	}

	// What the token opens at the old payer: the member's record, nothing else.
	a, err = d.web.do(ctx, req{method: "GET", url: d.source + "/fhir/Patient/" + others[0].id, as: "the member's access token", token: t.access, what: "another member of the old payer"})
	if err != nil {
		return nil, err
	}
	d.web.show(a, "another member's record does not exist for this token")
	if a.status != 404 {
		return nil, fmt.Errorf("the member's token read another member: %d", a.status)
	}
	return t, nil
}

// smartConfiguration reads the old payer's SMART configuration, which
// names its authorization server. The old payer started before its
// OpenID provider, so its first discovery failed; it answers 503 with
// Retry-After until it tries again, and the portal waits as told.
func (d *run) smartConfiguration(ctx context.Context, fhirBase string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		a, err := d.web.do(ctx, req{method: "GET", url: fhirBase + "/.well-known/smart-configuration", as: "the portal"})
		if err != nil {
			return err
		}
		if a.status == 200 {
			d.web.show(a, "authorization_endpoint="+str(a.json, "authorization_endpoint"), "token_endpoint="+str(a.json, "token_endpoint"))
			return nil
		}
		wait, _ := strconv.Atoi(a.header.Get("Retry-After"))
		if a.status != 503 || wait <= 0 || time.Now().After(deadline) {
			return expect(a, 200, "the old payer's SMART configuration")
		}
		d.web.show(a, "Retry-After: "+a.header.Get("Retry-After"), "(it tried its OpenID provider before that started, and waits before trying again)")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(wait) * time.Second):
		}
	}
}

// backOfficeRuns starts the batch job with the member's tokens and polls
// it until it ends.
func (d *run) backOfficeRuns(ctx context.Context, pid string, t *tokens, taskID string) (map[string]any, error) {
	d.title("The back office starts the batch job with the member's tokens and polls it")
	body, err := examples.Read("batch-job.json")
	if err != nil {
		return nil, err
	}
	body = []byte(strings.NewReplacer("REFRESH_TOKEN", t.refresh, "ACCESS_TOKEN", t.access, "SOURCE_PATIENT_ID", t.patient, "TASK_ID", taskID).Replace(string(body)))
	jobs := d.target + "/api/oidc_servers/" + pid + "/batch_job"
	a, err := d.web.do(ctx, req{method: "POST", url: jobs, as: "back-office token", token: d.backoffice, body: body,
		what: "examples/batch-job.json: fhirBundleRequest Patient/" + t.patient + "/$everything, targetPayer member-1, taskId " + taskID})
	if err != nil {
		return nil, err
	}
	if err := expect(a, 202, "starting the batch job"); err != nil {
		return nil, err
	}
	id := str(a.json, "batchJobId")
	d.web.show(a, "batchJobId="+id, "batchStatus="+str(a.json, "batchStatus"))

	last := ""
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if err := d.parts.exitedEarly(); err != nil {
			return nil, err
		}
		poll := req{method: "GET", url: jobs + "/" + id, as: "back-office token, every 250 ms", token: d.backoffice, quiet: true}
		a, err = d.web.do(ctx, poll)
		if err != nil {
			return nil, err
		}
		if err := expect(a, 200, "polling the batch job"); err != nil {
			return nil, err
		}
		status := str(a.json, "batchStatus")
		pages := str(a.json, "progress", "pagesFetched")
		if status != last {
			d.web.print(poll)
			d.web.show(a, "batchStatus="+status, "pagesFetched="+pages, "resourcesTotal="+str(a.json, "progress", "resourcesTotal"))
			last = status
		}
		switch status {
		case "COMPLETED":
			return a.json, nil
		case "FAILED", "STOPPED":
			return nil, fmt.Errorf("the batch job ended %s: %s", status, str(a.json, "failureReason"))
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the batch job is still %s after 2 minutes", status)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// results reads back what the exchange did and checks it.
func (d *run) results(ctx context.Context, taskID string, job map[string]any) error {
	d.title("The result at the new payer")
	prog, _ := job["progress"].(map[string]any)
	written := map[string]int{}
	if w, ok := prog["resourcesWritten"].(map[string]any); ok {
		for k, v := range w {
			n, _ := v.(float64)
			written[k] = int(n)
		}
	}
	d.res.Written = written
	provs, _ := prog["provenanceIds"].([]any)
	d.res.Provenance = len(provs)
	d.say("the job wrote %s", counts(written))
	d.say("and %d Provenance (one per page); MDM linked %s to member-1 (%s)", len(provs), str(job, "mdm", "linkedPatient"), str(job, "mdm", "memberIdentifier"))
	if len(written) == 0 || written["ExplanationOfBenefit"] == 0 || len(provs) == 0 {
		return fmt.Errorf("the job brought over %v and %d Provenance, want the member's claims with Provenance", written, len(provs))
	}

	// One of the Provenance records: who sent what.
	if len(provs) > 0 {
		a, err := d.web.do(ctx, req{method: "GET", url: d.target + "/fhir/Provenance/" + fmt.Sprint(provs[len(provs)-1])})
		if err != nil {
			return err
		}
		if err := expect(a, 200, "reading the page's Provenance"); err != nil {
			return err
		}
		targets, _ := a.json["target"].([]any)
		d.web.show(a, fmt.Sprintf("%d targets", len(targets)), "recorded="+str(a.json, "recorded"), "agent: "+agents(a.json))
	}

	// The member's record: $everything follows the MDM link to the copy.
	everything := map[string]int{}
	next := d.target + "/fhir/Patient/member-1/$everything?_count=500"
	for next != "" {
		a, err := d.web.do(ctx, req{method: "GET", url: next})
		if err != nil {
			return err
		}
		if err := expect(a, 200, "the member's $everything"); err != nil {
			return err
		}
		entries, _ := a.json["entry"].([]any)
		for _, e := range entries {
			everything[str(e.(map[string]any), "resource", "resourceType")]++
		}
		next = ""
		links, _ := a.json["link"].([]any)
		for _, l := range links {
			if lm, _ := l.(map[string]any); str(lm, "relation") == "next" {
				next = str(lm, "url")
			}
		}
		d.web.show(a, fmt.Sprintf("%d entries", len(entries)), map[bool]string{true: "next page follows", false: ""}[next != ""])
	}
	d.res.Everything = everything
	d.say("member-1's record now holds %s", counts(everything))
	for _, typ := range []string{"ExplanationOfBenefit", "Encounter", "Provenance"} {
		if everything[typ] == 0 {
			return fmt.Errorf("Patient/member-1/$everything has no %s: what was brought over is not in the member's record", typ)
		}
	}

	// A search that follows the MDM link, and one showing nothing else travelled.
	a, err := d.web.do(ctx, req{method: "GET", url: d.target + "/fhir/ExplanationOfBenefit?patient:mdm=Patient/member-1&_summary=count"})
	if err != nil {
		return err
	}
	d.web.show(a, "total="+str(a.json, "total"))
	q := url.Values{"family": {others[0].family}}
	a, err = d.web.do(ctx, req{method: "GET", url: d.target + "/fhir/Patient?" + q.Encode(), what: "another member of the old payer"})
	if err != nil {
		return err
	}
	if err := expect(a, 200, "searching for another member"); err != nil {
		return err
	}
	if found, _ := a.json["entry"].([]any); len(found) != 0 {
		return fmt.Errorf("%s %s's record travelled too", others[0].given, others[0].family)
	}
	d.web.show(a, "no entry: only the member's data moved")

	a, err = d.web.do(ctx, req{method: "GET", url: d.target + "/fhir/Task/" + taskID})
	if err != nil {
		return err
	}
	if err := expect(a, 200, "reading the Task"); err != nil {
		return err
	}
	d.web.show(a, "status="+str(a.json, "status"), "businessStatus="+str(a.json, "businessStatus", "text"))
	if str(a.json, "status") != "completed" {
		return fmt.Errorf("the add-payer Task is %s, want completed", str(a.json, "status"))
	}

	d.title("The emails the SMTP sink received")
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		done := false
		for _, m := range d.sink.Messages() {
			if strings.Join(m.To, ",") == "angelic.mueller@example.org" && strings.Contains(m.Text, "have been copied") {
				done = true
			}
		}
		if done {
			break
		}
		n := len(d.sink.Messages())
		if _, err := d.sink.Wait(wctx, n+1); err != nil {
			for _, m := range d.sink.Messages() {
				d.say("to %s: %s", strings.Join(m.To, ", "), m.Subject)
			}
			return errors.New("the member was not emailed that the request completed")
		}
	}
	// Deliveries are asynchronous: give the admins' copy a moment too.
	time.Sleep(500 * time.Millisecond)
	for _, m := range d.sink.Messages() {
		to := strings.Join(m.To, ", ")
		d.res.Emails[to] = append(d.res.Emails[to], m.Subject)
		d.say("to %-28s %s", to+":", m.Subject)
	}
	return nil
}

func agents(prov map[string]any) string {
	var out []string
	list, _ := prov["agent"].([]any)
	for _, a := range list {
		am, _ := a.(map[string]any)
		typ := ""
		if codings, _ := am["type"].(map[string]any)["coding"].([]any); len(codings) > 0 {
			typ = str(codings[0].(map[string]any), "code")
		}
		who := str(am, "who", "display")
		if who == "" {
			who = str(am, "who", "reference")
		}
		out = append(out, typ+" "+who)
	}
	return strings.Join(out, ", ")
}

func counts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", m[k], k))
	}
	return fmt.Sprintf("%d resources: %s", sum(m), strings.Join(parts, ", "))
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func countMails(m map[string][]string) int {
	n := 0
	for _, v := range m {
		n += len(v)
	}
	return n
}

// jwtClaims decodes a JWT's payload without checking it (the old payer's
// FHIR server checks it); only for showing what it carries.
func jwtClaims(jwt string) map[string]any {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil
	}
	var c map[string]any
	_ = json.Unmarshal(raw, &c)
	return c
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return b
}

// secret is a random token of 2n hex digits.
func secret(n int) string { return hex.EncodeToString(randomBytes(n)) }

// quote shell-quotes the arguments that need it, for printing.
func quote(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " <>'\"&;|$") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		out[i] = a
	}
	return out
}
