package bulk

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/auth"
	"github.com/p2pserver/p2pserver/auth/authtest"
	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/internal/httpapi"
	"github.com/p2pserver/p2pserver/internal/lease"
	"github.com/p2pserver/p2pserver/internal/secrets"
	"github.com/p2pserver/p2pserver/mdm"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

var (
	regOnce  sync.Once
	registry *search.Registry
)

func testRegistry() *search.Registry {
	regOnce.Do(func() { registry = search.NewRegistry(spec.R4()) })
	return registry
}

const (
	adminToken = "bulk-admin-token-0123456789abcdef"
	secretKey  = "0000000000000000000000000000000000000000000000000000000000000009"
)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}

// payer is a p2pserver FHIR API with Bulk Data on a real database, on a
// loopback port that stays the same across restarts, guarded by tokens of
// the in-process OpenID provider.
type payer struct {
	t      testing.TB
	dir    string
	dsn    string // the database
	addr   string
	URL    string // FHIR base
	idp    *oidctest.Provider
	cfg    Config
	db     store.DB
	st     *store.Store
	srv    *fhir.Server
	ex     *Exporter
	auth   *auth.Server
	hs     *http.Server
	cancel context.CancelFunc
	// leases, when set, makes the Exporter's lease manager at each start.
	leases func(st *store.Store) *lease.Manager
}

func newPayer(t testing.TB, idp *oidctest.Provider, cfg Config) *payer {
	t.Helper()
	return newPayerWith(t, idp, cfg, nil)
}

// newPayerWith is newPayer with the Exporter's lease manager made by
// leases (nil: its own).
func newPayerWith(t testing.TB, idp *oidctest.Provider, cfg Config, leases func(*store.Store) *lease.Manager) *payer {
	t.Helper()
	p := &payer{t: t, dir: t.TempDir(), dsn: storetest.DSN(t), idp: idp, cfg: cfg, leases: leases}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.URL = "http://" + p.addr + "/fhir"
	p.start(ln)
	t.Cleanup(p.stop)
	return p
}

// start opens the database and serves.
func (p *payer) start(ln net.Listener) {
	t := p.t
	t.Helper()
	db, err := store.OpenDB(context.Background(), p.dsn, store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(db, testRegistry(), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	p.db, p.st = db, st
	p.srv = fhir.New(st, fhir.Config{BaseURL: p.URL, MaxBody: 64 << 20, Logger: testLogger(t)})
	cipher, err := secrets.NewCipher(secretKey)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := httpapi.NewAuthorizer(testLogger(t), httpapi.Role{Name: "admin", Tokens: []string{adminToken}})
	if err != nil {
		t.Fatal(err)
	}
	// SMART Backend Services, as cmd/p2pserver wires it.
	if p.auth, err = auth.New(st, auth.Config{BaseURL: "http://" + p.addr, FHIRBase: p.URL, Cipher: cipher,
		Admin: admin.Require("admin"), Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	guard, err := smart.New(smart.Config{BaseURL: p.URL, Issuers: []smart.Issuer{{URL: p.idp.Issuer()}},
		AdminTokens: []string{adminToken}, Logger: testLogger(t), Backend: p.auth})
	if err != nil {
		t.Fatal(err)
	}
	guard.Attach(p.srv)
	p.srv.SetPatientLinks(mdm.Linked)
	mm, err := mdm.NewMemberMatch(p.srv, mdm.MemberMatchConfig{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	mm.Register()
	cfg := p.cfg
	cfg.Dir = filepath.Join(p.dir, "exports")
	cfg.Organization = func(ctx context.Context, id string) string {
		c, err := p.auth.Client(ctx, id)
		if err != nil {
			return ""
		}
		return c.OrganizationID
	}
	cfg.Logger = testLogger(t)
	if p.leases != nil {
		cfg.Leases = p.leases(st)
	}
	if p.ex, err = New(p.srv, mm, cfg); err != nil {
		t.Fatal(err)
	}
	p.ex.Register()
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	if err := p.ex.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.auth.Start(ctx); err != nil {
		t.Fatal(err)
	}
	mux := chi.NewRouter()
	mux.Method(http.MethodGet, "/fhir"+smart.WellKnownPath(), guard.ConfigurationHandler())
	mux.Mount("/fhir", p.srv.Handler())
	mux.Mount("/auth", p.auth.Handler())
	api := httpapi.NewRouter(testLogger(t))
	p.auth.MountAPI(api)
	mux.Mount("/api", api)
	p.hs = &http.Server{Handler: mux}
	go func() { _ = p.hs.Serve(ln) }()
}

// stop shuts the server down as a process exit would leave it: workers
// stopped where they are, the database closed.
func (p *payer) stop() {
	if p.hs == nil {
		return
	}
	_ = p.hs.Close()
	p.cancel()
	_ = p.ex.Close()
	_ = p.auth.Close()
	p.st.Close()
	_ = p.db.Close()
	p.hs = nil
}

// restart stops the server and starts it again on the same database,
// folder and port.
func (p *payer) restart() {
	p.t.Helper()
	p.stop()
	var ln net.Listener
	var err error
	for range 50 {
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		p.t.Fatal(err)
	}
	p.start(ln)
}

// token mints a system token of client with scopes, for this server.
func (p *payer) token(client string, scopes ...string) string {
	p.t.Helper()
	tok, err := p.idp.MintSystem(oidctest.SystemGrant{ClientID: client, Scopes: scopes, Audience: []string{p.URL}})
	if err != nil {
		p.t.Fatal(err)
	}
	return tok.AccessToken
}

// backend registers a SMART Backend Services client (an ES384 key) with
// scopes and returns its clientId and an access token from the token
// endpoint.
func (p *payer) backend(name string, scopes ...string) (clientID, token string) {
	p.t.Helper()
	key := authtest.NewKey(p.t, jose.ES384)
	base := "http://" + p.addr
	clientID = authtest.MustRegister(p.t, base, adminToken, name, scopes, key)
	return clientID, key.Token(p.t, clientID, base+auth.TokenPath, strings.Join(scopes, " "))
}

// backendOf registers a SMART Backend Services client of organization org
// and returns its clientId and an access token.
func (p *payer) backendOf(name, org string, scopes ...string) (clientID, token string) {
	p.t.Helper()
	key := authtest.NewKey(p.t, jose.ES384)
	base := "http://" + p.addr
	status, out := authtest.Register(p.t, base, adminToken, map[string]any{"name": name, "jwks": authtest.JWKS(key),
		"scopes": scopes, "organizationId": org})
	clientID, _ = out["clientId"].(string)
	if status != http.StatusCreated || clientID == "" {
		p.t.Fatalf("register %s: %d %v", name, status, out)
	}
	return clientID, key.Token(p.t, clientID, base+auth.TokenPath, strings.Join(scopes, " "))
}

// do sends a request with token (none when empty) and returns the answer
// with its body read.
func (p *payer) do(method, url, token string, body any, hdr ...string) (*http.Response, []byte) {
	p.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			p.t.Fatal(err)
		}
		rd = bytes.NewReader(raw)
	}
	if !strings.HasPrefix(url, "http") {
		url = p.URL + url
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		p.t.Fatal(err)
	}
	req.Header.Set("Accept", "application/fhir+json")
	if rd != nil {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		p.t.Fatal(err)
	}
	return resp, raw
}

// put writes resources with the admin token (a transaction).
func (p *payer) put(resources ...map[string]any) {
	p.t.Helper()
	var entries []any
	for _, r := range resources {
		entries = append(entries, map[string]any{"resource": r, "request": map[string]any{
			"method": "PUT", "url": fmt.Sprintf("%s/%s", r["resourceType"], r["id"])}})
	}
	resp, body := p.do("POST", "", adminToken, map[string]any{"resourceType": "Bundle", "type": "transaction", "entry": entries})
	if resp.StatusCode != 200 {
		p.t.Fatalf("load: %d %s", resp.StatusCode, body)
	}
}

// kickoff starts an async operation and returns the status URL.
func (p *payer) kickoff(method, path, token string, body any) string {
	p.t.Helper()
	resp, raw := p.do(method, path, token, body, "Prefer", "respond-async")
	if resp.StatusCode != http.StatusAccepted {
		p.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	loc := resp.Header.Get("Content-Location")
	if loc == "" {
		p.t.Fatalf("%s %s: 202 without Content-Location", method, path)
	}
	return loc
}

// wait polls a status URL until the job ends; it returns the manifest
// (complete) or fails the test.
func (p *payer) wait(status, token string) *Manifest {
	p.t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		resp, raw := p.do("GET", status, token, nil)
		switch resp.StatusCode {
		case http.StatusAccepted:
			if resp.Header.Get("X-Progress") == "" || resp.Header.Get("Retry-After") == "" {
				p.t.Fatalf("202 status without X-Progress or Retry-After: %v", resp.Header)
			}
			time.Sleep(20 * time.Millisecond)
			continue
		case http.StatusOK:
			var m Manifest
			if err := json.Unmarshal(raw, &m); err != nil {
				p.t.Fatalf("manifest: %v: %s", err, raw)
			}
			return &m
		default:
			p.t.Fatalf("status: %d %s", resp.StatusCode, raw)
		}
	}
	p.t.Fatal("the job did not finish in 5 minutes")
	return nil
}

// lines downloads an NDJSON file and decodes its lines.
func (p *payer) lines(url, token string) []map[string]any {
	p.t.Helper()
	resp, raw := p.do("GET", url, token, nil)
	if resp.StatusCode != 200 {
		p.t.Fatalf("file %s: %d %s", url, resp.StatusCode, raw)
	}
	if ct := resp.Header.Get("Content-Type"); ct != NDJSON {
		p.t.Fatalf("file %s: Content-Type %q", url, ct)
	}
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			p.t.Fatalf("file %s: line %q: %v", url, sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// exported downloads every output file of m and returns the ids by type
// ("Type/id"), checking that each file's count is its line count.
func (p *payer) exported(m *Manifest, token string) map[string]map[string]any {
	p.t.Helper()
	out := map[string]map[string]any{}
	for _, o := range m.Output {
		ls := p.lines(o.URL, token)
		if int64(len(ls)) != o.Count {
			p.t.Errorf("%s: manifest count %d, file has %d lines", o.URL, o.Count, len(ls))
		}
		for _, r := range ls {
			if r["resourceType"] != o.Type {
				p.t.Errorf("%s file holds a %v", o.Type, r["resourceType"])
			}
			key := fmt.Sprintf("%s/%s", r["resourceType"], r["id"])
			if out[key] != nil {
				p.t.Errorf("%s exported twice", key)
			}
			out[key] = r
		}
	}
	return out
}
