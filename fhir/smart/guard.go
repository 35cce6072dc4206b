// Package smart guards the FHIR API with SMART on FHIR bearer tokens: it
// verifies JWT access tokens from trusted issuers (signature, iss, aud,
// exp, nbf), reads their SMART scopes (v1 and v2 syntax) and launch
// context, and turns them into the fhir.Access the FHIR core enforces in
// every interaction. It also serves the .well-known/smart-configuration
// document and fills the CapabilityStatement's security section.
//
// The rules, in one place:
//
//   - With no trusted issuer configured the server runs open: no token is
//     needed and none is checked. Start-up logs it, and the
//     CapabilityStatement says it. The one exception: an access token of
//     this server's own token endpoint (Config.Backend, SMART Backend
//     Services) is verified when presented, and the request is then held
//     to its scopes, so that what a backend client starts is known to be
//     its own. A request without a token is still served in full.
//   - Otherwise every FHIR request but GET /metadata needs
//     "Authorization: Bearer <token>". An admin token (-admin-token) has
//     full access. Any other token must be a JWT from a trusted issuer
//     (or from this server's token endpoint, Config.Backend), signed with
//     one of its keys, meant for this server (aud), and current (exp,
//     nbf); if not, 401 with WWW-Authenticate: Bearer
//     error="invalid_token".
//   - A token with a patient claim (or, failing that, a fhirUser that is a
//     Patient) is confined to that member's compartment whatever its
//     scopes: anything outside reads as not found, searches find nothing
//     outside.
//   - patient/ scopes count only with such a patient; user/ and system/
//     scopes count always. A type may be read (and searched, included,
//     history) if a counted scope grants r or s on it, written if c, u or
//     d; the interaction itself is checked precisely (search needs s, read
//     r, create c, update u, delete d). Otherwise 403 with
//     error="insufficient_scope".
package smart

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/netguard"
)

// Config sets up a Guard.
type Config struct {
	// BaseURL is the FHIR base URL (e.g. https://payer.example/fhir): the
	// default audience, and where the SMART configuration says it lives.
	BaseURL string
	// Issuers are the trusted token issuers (see ParseIssuers). None: the
	// server runs open.
	Issuers []Issuer
	// Audiences are the aud values accepted (one must be in the token's
	// aud); default BaseURL.
	Audiences []string
	// AdminTokens have full access, compared in constant time (see
	// httpapi.SplitTokens for the -admin-token list).
	AdminTokens []string
	// HTTPClient fetches discovery documents and key sets; default a client
	// checked by netguard.Default, with a 10 s timeout.
	HTTPClient *http.Client
	Logger     *slog.Logger
	// Leeway is the clock skew tolerated on nbf; default one minute. (exp
	// is checked without leeway.)
	Leeway time.Duration
	// Backend, when set, is this server's own authorization server for
	// SMART Backend Services: its tokens are accepted beside the trusted
	// issuers', and the SMART configuration names its token endpoint.
	Backend Backend
}

// Guard authenticates FHIR requests. Its methods are safe for concurrent
// use.
type Guard struct {
	cfg      Config
	log      *slog.Logger
	issuers  []*trusted
	backend  Backend
	admin    [][sha256.Size]byte
	audience []string

	mu     sync.Mutex
	server *fhir.Server // set by Attach, to refresh the security section
	uris   bool         // the security section carries the oauth-uris
}

// New builds a Guard. It does no network I/O: issuers without configured
// keys are discovered on first use (or by Prepare).
func New(cfg Config) (*Guard, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = netguard.Default().Client(10 * time.Second)
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = time.Minute
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	if cfg.BaseURL == "" {
		return nil, errors.New("smart: the FHIR base URL is required")
	}
	g := &Guard{cfg: cfg, log: cfg.Logger, backend: cfg.Backend}
	seen := map[string]bool{}
	if g.backend != nil {
		iss := g.backend.Endpoints().Issuer
		if err := checkIssuerURL(iss); err != nil {
			return nil, fmt.Errorf("smart: backend services: %w", err)
		}
		seen[issuerKey(iss)] = true
	}
	for _, is := range cfg.Issuers {
		if err := checkIssuerURL(is.URL); err != nil {
			return nil, fmt.Errorf("smart: %w", err)
		}
		if seen[issuerKey(is.URL)] {
			return nil, fmt.Errorf("smart: issuer %s is listed twice, or is this server's own token issuer", is.URL)
		}
		seen[issuerKey(is.URL)] = true
		g.issuers = append(g.issuers, newTrusted(is, cfg.HTTPClient))
	}
	g.audience = cfg.Audiences
	if len(g.audience) == 0 {
		g.audience = []string{cfg.BaseURL}
	}
	for _, tok := range cfg.AdminTokens {
		if tok = strings.TrimSpace(tok); tok != "" {
			g.admin = append(g.admin, sha256.Sum256([]byte(tok)))
		}
	}
	return g, nil
}

// Open reports whether the server runs without access control (no trusted
// issuer).
func (g *Guard) Open() bool { return len(g.issuers) == 0 }

// Attach installs the guard on s: its middleware (s.Use, so call it before
// s.Handler) and the CapabilityStatement security section. In open mode it
// logs a warning saying so.
func (g *Guard) Attach(s *fhir.Server) {
	g.mu.Lock()
	g.server = s
	g.mu.Unlock()
	s.Use(g.Middleware)
	s.SetSecurity(g.security(nil))
	if g.Open() {
		g.log.Warn("FHIR API is OPEN: no -trusted-issuers configured, so no token is needed and every client may read and write all data; use this for local work only",
			"fhir", g.cfg.BaseURL)
		if g.backend != nil {
			g.log.Info("FHIR API: access tokens of this server's token endpoint (SMART Backend Services) are verified when presented and hold the request to their scopes; requests without a token are still served",
				"token_endpoint", g.backend.Endpoints().TokenEndpoint)
		}
		return
	}
	var names []string
	for _, is := range g.issuers {
		names = append(names, is.URL)
	}
	if g.backend != nil {
		names = append(names, g.backend.Endpoints().Issuer+" (this server's token endpoint, SMART Backend Services)")
	}
	g.log.Info("FHIR API requires bearer tokens", "issuers", strings.Join(names, ", "),
		"audience", strings.Join(g.audience, ", "), "admin_tokens", len(g.admin))
}

// Prepare discovers every issuer whose keys are not configured, and the
// first issuer (whose endpoints the SMART configuration and the
// CapabilityStatement repeat), so that a misconfiguration shows at
// start-up. Failures are returned (joined) for the caller to log; they do
// not stop the server: later requests try again.
func (g *Guard) Prepare(ctx context.Context) error {
	if g.Open() {
		return nil
	}
	var all []error
	for _, is := range g.issuers {
		if len(is.Keys) > 0 {
			continue
		}
		if _, err := is.tokenVerifier(ctx); err != nil {
			all = append(all, err)
		}
	}
	if len(g.issuers[0].Keys) > 0 {
		// Its keys are configured, but the SMART configuration and the
		// CapabilityStatement repeat its endpoints.
		if _, err := g.issuers[0].discovery(ctx); err != nil {
			all = append(all, err)
		}
	}
	// A failure at start-up is logged and retried by the first request
	// that needs the issuer: the issuer is often started after the server.
	for _, is := range g.issuers {
		is.forgetStartFailure()
	}
	g.refreshSecurity()
	return errors.Join(all...)
}

// Token is a verified access token.
type Token struct {
	Issuer   string
	Subject  string
	ClientID string
	Audience []string
	Expiry   time.Time
	// Patient is the launch-context patient (the patient claim), or the
	// Patient id of a fhirUser that is a Patient; empty for none.
	Patient  string
	FHIRUser string
	Scopes   Scopes
	// Backend is true for a token this server's own token endpoint issued
	// to a registered backend client (Config.Backend); ClientID is then
	// that client's clientId. See BackendClient.
	Backend bool
}

type tokenKey struct{}
type adminKey struct{}

// FromContext returns the verified token of the request, nil for admin
// tokens and in open mode.
func FromContext(ctx context.Context) *Token {
	t, _ := ctx.Value(tokenKey{}).(*Token)
	return t
}

// IsAdmin reports whether the request was made with an admin token.
func IsAdmin(ctx context.Context) bool {
	v, _ := ctx.Value(adminKey{}).(bool)
	return v
}

// claims are the JWT claims read beyond what go-oidc checks.
type claims struct {
	Scope    json.RawMessage `json:"scope"` // a string (RFC 8693) or, from some issuers, a list
	Scp      []string        `json:"scp"`
	Patient  json.RawMessage `json:"patient"`
	FHIRUser string          `json:"fhirUser"`
	ClientID string          `json:"client_id"`
	Azp      string          `json:"azp"`
	NBF      *jsonNumber     `json:"nbf"`
}

type jsonNumber float64

func (n *jsonNumber) UnmarshalJSON(b []byte) error {
	var f json.Number
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	v, err := f.Float64()
	*n = jsonNumber(v)
	return err
}

// Verify checks a bearer token: a JWT signed by a trusted issuer's key,
// whose iss is that issuer, whose aud names this server, not expired and
// not before its nbf; or a token of this server's own token endpoint,
// checked by Config.Backend. Errors are *errs.Error: Unauthorized for a
// token that is not good, Transient when the issuer's keys cannot be
// fetched.
func (g *Guard) Verify(ctx context.Context, raw string) (*Token, error) {
	const op = "smart.verify"
	if g.isBackendToken(raw) {
		t, err := g.backend.VerifyBackend(ctx, raw)
		if err != nil {
			return nil, errs.E(op, err)
		}
		if !t.Backend || t.ClientID == "" {
			return nil, errs.E(op, errs.Internal, "backend services returned a token without its client")
		}
		return t, nil
	}
	jws, err := jose.ParseSigned(raw, signingAlgs)
	if err != nil {
		return nil, errs.E(op, errs.Unauthorized, "the bearer token is not a JWT signed with an asymmetric algorithm", err)
	}
	var peek struct {
		Iss string `json:"iss"`
	}
	if err := json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &peek); err != nil {
		return nil, errs.E(op, errs.Unauthorized, "the bearer token's claims are not a JSON object", err)
	}
	is := g.issuer(peek.Iss)
	if is == nil {
		return nil, errs.E(op, errs.Unauthorized, fmt.Sprintf("tokens from issuer %q are not accepted by this server", peek.Iss))
	}
	v, err := is.tokenVerifier(ctx)
	if err != nil {
		return nil, errs.E(op, errs.Transient, "the token issuer's keys cannot be fetched right now; try again later", err)
	}
	idt, err := v.Verify(ctx, raw)
	if err != nil {
		// go-oidc flattens the key set's error into text (%v).
		if strings.Contains(err.Error(), errIssuerUnreachable.Error()) {
			return nil, errs.E(op, errs.Transient, "the token issuer's keys cannot be fetched right now; try again later", err)
		}
		return nil, errs.E(op, errs.Unauthorized, "the token's signature or claims are not valid for its issuer", err)
	}
	now := time.Now()
	if idt.Expiry.IsZero() || !now.Before(idt.Expiry) {
		return nil, errs.E(op, errs.Unauthorized, "the token has expired")
	}
	if issuerKey(idt.Issuer) != issuerKey(is.URL) {
		return nil, errs.E(op, errs.Unauthorized, "the token's issuer is not trusted")
	}
	if !slices.ContainsFunc(idt.Audience, func(a string) bool { return slices.Contains(g.audience, a) }) {
		return nil, errs.E(op, errs.Unauthorized, fmt.Sprintf("the token is not meant for this server: its audience must include %s", strings.Join(g.audience, " or ")))
	}
	var c claims
	if err := idt.Claims(&c); err != nil {
		return nil, errs.E(op, errs.Unauthorized, "the token's claims cannot be read", err)
	}
	if c.NBF != nil && time.Unix(int64(*c.NBF), 0).After(now.Add(g.cfg.Leeway)) {
		return nil, errs.E(op, errs.Unauthorized, "the token is not valid yet (nbf)")
	}
	t := &Token{Issuer: idt.Issuer, Subject: idt.Subject, Audience: idt.Audience, Expiry: idt.Expiry, FHIRUser: c.FHIRUser, ClientID: c.ClientID}
	if t.ClientID == "" {
		t.ClientID = c.Azp
	}
	if t.Scopes, err = scopesOf(c); err != nil {
		return nil, errs.E(op, errs.Unauthorized, "the token's scope claim is neither a string nor a list of strings", err)
	}
	if t.Patient, err = patientOf(c); err != nil {
		return nil, errs.E(op, errs.Unauthorized, err.Error())
	}
	return t, nil
}

func scopesOf(c claims) (Scopes, error) {
	var list []string
	if len(c.Scope) > 0 && string(c.Scope) != "null" {
		var s string
		if err := json.Unmarshal(c.Scope, &s); err == nil {
			list = strings.Fields(s)
		} else if err := json.Unmarshal(c.Scope, &list); err != nil {
			return Scopes{}, err
		}
	}
	list = append(list, c.Scp...)
	return parseScopeList(list), nil
}

// patientOf is the member a token is about: the SMART patient claim, or a
// fhirUser naming a Patient.
func patientOf(c claims) (string, error) {
	if len(c.Patient) > 0 && string(c.Patient) != "null" {
		var p string
		if err := json.Unmarshal(c.Patient, &p); err != nil {
			return "", errors.New("the token's patient claim is not a string")
		}
		if p = strings.TrimSpace(p); p != "" {
			if !validID(p) {
				return "", fmt.Errorf("the token's patient claim %q is not a FHIR id", p)
			}
			return p, nil
		}
	}
	if c.FHIRUser != "" {
		ref := c.FHIRUser
		if i := strings.LastIndex(ref, "/Patient/"); i >= 0 {
			ref = ref[i+1:]
		}
		if id, ok := strings.CutPrefix(ref, "Patient/"); ok && validID(id) {
			return id, nil
		}
	}
	return "", nil
}

func validID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func (g *Guard) issuer(iss string) *trusted {
	if iss == "" {
		return nil
	}
	for _, is := range g.issuers {
		if issuerKey(is.URL) == issuerKey(iss) {
			return is
		}
	}
	return nil
}

func (g *Guard) isAdmin(tok string) bool {
	d := sha256.Sum256([]byte(tok))
	found := 0
	for _, a := range g.admin {
		// Compare with every admin token, so timing tells nothing.
		found |= subtle.ConstantTimeCompare(d[:], a[:])
	}
	return found == 1
}

// levels are the scope levels that count for t: patient/ scopes only with
// a patient to confine them to.
func (t *Token) levels() []string {
	if t.Patient != "" {
		return []string{LevelPatient, LevelUser, LevelSystem}
	}
	return []string{LevelUser, LevelSystem}
}

// Allows reports whether t's scopes grant need on resources of typ.
func (t *Token) Allows(typ string, need Perm) bool {
	return t.Scopes.Allows(t.levels(), typ, need)
}

// Access is the fhir.Access the token gives, or a Permission error when it
// gives no access to any resource at all.
func (t *Token) Access() (*fhir.Access, error) {
	levels := t.levels()
	usable := false
	for _, s := range t.Scopes.Resource {
		usable = usable || slices.Contains(levels, s.Level)
	}
	if !usable {
		msg := "the token grants no access to FHIR resources"
		switch {
		case slices.ContainsFunc(t.Scopes.Resource, func(s Scope) bool { return s.Level == LevelPatient }):
			msg = "the token has only patient/ scopes but no patient claim to apply them to"
		case len(t.Scopes.Ignored) > 0:
			msg += fmt.Sprintf(": scope %s is not honoured (%s)", t.Scopes.Ignored[0].Scope, t.Scopes.Ignored[0].Reason)
		default:
			msg += ": it has no patient/, user/ or system/ resource scope"
		}
		return nil, errs.E("smart.access", errs.Permission, msg)
	}
	subject := t.Subject
	if subject == "" {
		subject = t.ClientID
	}
	return &fhir.Access{
		Grant:   func(typ string, need Perm) bool { return t.Scopes.Allows(levels, typ, need) },
		Patient: t.Patient,
		Subject: subject,
		Client:  t.Owner(),
		Level:   levelFor(t),
		Binding: t.binding(),
	}, nil
}

// Owner names the client the token was issued to, as the owner of what it
// starts and keeps (Bulk Data jobs, the Groups of $bulk-member-match; see
// authz.OwnerTagSystem): "client:<clientId>" for a token of this server's
// own token endpoint (SMART Backend Services), "token:<iss>|<client_id or
// sub>" for a token of a trusted issuer.
func (t *Token) Owner() string {
	if t.Backend && t.ClientID != "" {
		return "client:" + t.ClientID
	}
	who := t.ClientID
	if who == "" {
		who = t.Subject
	}
	return "token:" + t.Issuer + "|" + who
}

// binding identifies the token's rights for the cursors it makes: its
// issuer, subject, client, patient and scopes (in a stable order).
func (t *Token) binding() string {
	var raw []string
	for _, s := range t.Scopes.Resource {
		raw = append(raw, s.Raw)
	}
	slices.Sort(raw)
	return strings.Join([]string{t.Issuer, t.Subject, t.ClientID, t.Patient, strings.Join(raw, " ")}, "\x00")
}

// Middleware authenticates each FHIR request (see the package comment) and
// puts the resulting fhir.Access and Token in its context.
func (g *Guard) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.Open() {
			// Open stays open; only a token of this server's own token
			// endpoint is looked at, so that it carries its client.
			if raw, ok := bearer(r); !ok || !g.isBackendToken(raw) {
				next.ServeHTTP(w, r)
				return
			}
		}
		path := routePath(r)
		if (r.Method == http.MethodGet || r.Method == http.MethodHead) && (path == "/metadata" || path == wellKnownPath) {
			next.ServeHTTP(w, r)
			return
		}
		raw, ok := bearer(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="p2pserver"`)
			fhir.WriteError(w, r, errs.E("smart.auth", errs.Unauthorized,
				"this FHIR server needs a bearer token (Authorization: Bearer <token>) from a trusted issuer"))
			return
		}
		if !g.Open() && g.isAdmin(raw) {
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), adminKey{}, true)))
			return
		}
		tok, err := g.Verify(r.Context(), raw)
		if err != nil {
			g.refuse(w, r, err)
			return
		}
		a, err := tok.Access()
		if err != nil {
			g.refuse(w, r, err)
			return
		}
		if typ, need := interaction(r.Method, path); need != 0 && !tok.Allows(typ, need) {
			g.refuse(w, r, errs.E("smart.scope", errs.Permission, fmt.Sprintf(
				"the token's scopes do not allow this %s: it needs %s/%s.%s (or a v1 equivalent)",
				verb(need), levelFor(tok), typ, need)))
			return
		}
		g.refreshSecurity()
		ctx := context.WithValue(r.Context(), tokenKey{}, tok)
		next.ServeHTTP(&challenger{ResponseWriter: w}, r.WithContext(fhir.WithAccess(ctx, a)))
	})
}

// challenger adds the insufficient_scope challenge (RFC 6750 3.1) to the
// refusals the FHIR core makes for a token's rights.
type challenger struct{ http.ResponseWriter }

func (c *challenger) WriteHeader(status int) {
	if status == http.StatusForbidden && c.Header().Get("WWW-Authenticate") == "" {
		c.Header().Set("WWW-Authenticate", `Bearer realm="p2pserver", error="insufficient_scope"`)
	}
	c.ResponseWriter.WriteHeader(status)
}

// Unwrap lets http.ResponseController reach the connection.
func (c *challenger) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// refuse answers an authentication or authorization failure with the
// RFC 6750 challenge and an OperationOutcome.
func (g *Guard) refuse(w http.ResponseWriter, r *http.Request, err error) {
	msg, _ := errs.Public(err)
	switch errs.KindOf(err) {
	case errs.Unauthorized:
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="p2pserver", error="invalid_token", error_description=%q`, strings.ReplaceAll(msg, `"`, "'")))
		g.log.InfoContext(r.Context(), "fhir: bearer token refused", "path", r.URL.Path, "err", err)
	case errs.Permission:
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="p2pserver", error="insufficient_scope", error_description=%q`, strings.ReplaceAll(msg, `"`, "'")))
	case errs.Transient:
		w.Header().Set("Retry-After", "10") // WriteError logs the cause
	}
	fhir.WriteError(w, r, err)
}

func verb(p Perm) string {
	switch p {
	case Search:
		return "search"
	case Read:
		return "read"
	case Create:
		return "create"
	case Update:
		return "update"
	case Delete:
		return "delete"
	}
	return "interaction"
}

// levelFor is the scope level to suggest in a refusal: the one the token
// uses.
func levelFor(t *Token) string {
	switch {
	case t.Patient != "":
		return LevelPatient
	case slices.ContainsFunc(t.Scopes.Resource, func(s Scope) bool { return s.Level == LevelUser }):
		return LevelUser
	}
	return LevelSystem
}

// routePath is the request path below the FHIR base: chi sets it when the
// FHIR handler is mounted; otherwise the URL path is it.
func routePath(r *http.Request) string {
	if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePath != "" {
		return rc.RoutePath
	}
	return r.URL.Path
}

// interaction says which permission a REST interaction needs on which
// type, from its method and path below the base, so that a token lacking
// it is refused early with the RFC 6750 challenge. The FHIR core asks the
// same policy (authz.Policy.Need) for every interaction, REST or Bundle
// entry; transactions, system history and operations are left to it
// (need 0).
func interaction(method, path string) (string, Perm) {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	if len(segs) == 0 || segs[0] == "" || !spec.R4().IsResource(segs[0]) {
		return "", 0
	}
	typ := segs[0]
	switch len(segs) {
	case 1:
		switch method {
		case http.MethodGet, http.MethodHead:
			return typ, Search
		case http.MethodPost:
			return typ, Create
		case http.MethodPut:
			return typ, Update
		case http.MethodDelete:
			return typ, Delete
		}
	case 2:
		switch {
		case segs[1] == "_search" && method == http.MethodPost:
			return typ, Search
		case segs[1] == "_history":
			return typ, Search // type history, as SMART App Launch 2 assigns it
		case strings.HasPrefix(segs[1], "$"):
			return "", 0
		}
		switch method {
		case http.MethodGet, http.MethodHead:
			return typ, Read
		case http.MethodPut:
			return typ, Update
		case http.MethodDelete:
			return typ, Delete
		}
	default:
		if segs[2] == "_history" {
			return typ, Read
		}
	}
	return "", 0
}

// bearer extracts the token of an "Authorization: Bearer" header; the
// scheme is case-insensitive (RFC 7235).
func bearer(r *http.Request) (string, bool) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}
