package oidcservers

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"golang.org/x/oauth2"

	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/httpapi"
)

// VerifyTimeout bounds POST /api/oidc_servers/{id}/verify: the discovery
// document and the key set together.
const VerifyTimeout = 5 * time.Second

// API serves the OIDC server definitions under /api. Reads are open (member
// portals list the source payers and start the OAuth2 flow from one); writes
// and verify need the admin middleware.
type API struct {
	repo          *Repository
	admin         func(http.Handler) http.Handler
	logger        *slog.Logger
	maxBody       int64
	verifyTimeout time.Duration
	client        *http.Client // nil: the package default
	signer        AssertionSigner
}

// UseSigner gives the system_token check this payer's client keys, which
// sign its client assertions (private_key_jwt).
func (a *API) UseSigner(s AssertionSigner) { a.signer = s }

// UseClient makes verify fetch the discovery document and keys with c
// (the binary passes one checked by its outbound policy).
func (a *API) UseClient(c *http.Client) { a.client = c }

// NewAPI builds the API. admin guards the write routes (see httpapi.Admin);
// maxBody caps request bodies in bytes.
func NewAPI(repo *Repository, admin func(http.Handler) http.Handler, logger *slog.Logger, maxBody int64) *API {
	if logger == nil {
		logger = slog.Default()
	}
	return &API{repo: repo, admin: admin, logger: logger, maxBody: maxBody, verifyTimeout: VerifyTimeout}
}

// Mount registers the routes on r, the router mounted at /api (see
// httpapi.NewRouter). Routes are registered flat, so other packages can add
// routes below /oidc_servers/{id} to the same router.
func (a *API) Mount(r chi.Router) {
	r.Get("/oidc_servers", a.list)
	r.Get("/oidc_servers/{id}", a.get)
	r.With(a.admin).Post("/oidc_servers", a.create)
	r.With(a.admin).Put("/oidc_servers/{id}", a.replace)
	r.With(a.admin).Delete("/oidc_servers/{id}", a.delete)
	r.With(a.admin).Post("/oidc_servers/{id}/verify", a.verify)
	r.With(a.admin).Post("/oidc_servers/{id}/system_token", a.systemToken)
}

// systemToken obtains a system access token with the definition's
// system access and reports what was granted (CheckSystemToken); 200
// whatever the outcome, the token never in the answer.
func (a *API) systemToken(w http.ResponseWriter, r *http.Request) {
	id, err := PIDParam(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	s, err := a.repo.Get(r.Context(), id)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.verifyTimeout)
	defer cancel()
	rep := CheckSystemToken(ctx, s, a.signer, a.client)
	a.logger.Info("oidc server system token checked", "pid", id, "ok", rep.OK, "problems", rep.Problems, "role", role(r))
	httpapi.WriteJSON(w, http.StatusOK, rep)
}

// serverView is a definition as the API returns it: every field but the
// secret, plus whether a secret is stored.
type serverView struct {
	Server
	HasClientSecret bool `json:"hasClientSecret"`
}

func view(s Server) serverView {
	return serverView{Server: s, HasClientSecret: s.ClientSecret != ""}
}

// serverInput is the body of POST and PUT: the definition's fields, with
// ClientSecret a pointer so PUT can tell "keep the stored secret" (absent)
// from "remove it" (""). The outer fields shadow the embedded ones of the
// same JSON name.
type serverInput struct {
	Server
	PID          *int64  `json:"pid"`
	ClientSecret *string `json:"clientSecret"`
	// HasClientSecret is accepted, and ignored, so a definition read with GET
	// can be sent back with PUT as it is.
	HasClientSecret *bool `json:"hasClientSecret"`
}

// apply replaces s's fields with the input's, keeping s's pid, and its secret
// unless the input has one.
func (in serverInput) apply(s *Server) {
	pid, secret := s.PID, s.ClientSecret
	*s = in.Server
	s.PID, s.ClientSecret = pid, secret
	if in.ClientSecret != nil {
		s.ClientSecret = *in.ClientSecret
	}
}

type listEntry struct {
	PID  int64  `json:"pid"`
	Name string `json:"name"`
}

func (a *API) list(w http.ResponseWriter, r *http.Request) {
	all, err := a.repo.List(r.Context())
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	out := struct {
		Servers []listEntry `json:"servers"`
	}{Servers: make([]listEntry, 0, len(all))}
	for _, s := range all {
		out.Servers = append(out.Servers, listEntry{PID: s.PID, Name: s.Name})
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

// PIDParam parses a route's {id} path parameter, the pid of an OIDC
// server definition (/api/oidc_servers/{id}/...): anything but a positive
// integer names no definition, an errs.NotFound error quoting at most 40
// bytes of it.
func PIDParam(r *http.Request) (int64, error) {
	raw := chi.URLParam(r, "id")
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id <= 0 {
		if len(raw) > 40 {
			raw = strings.ToValidUTF8(raw[:40], "") + "…"
		}
		return 0, errs.E("oidcservers.api", errs.NotFound, fmt.Sprintf("no OIDC server definition with pid %q", raw))
	}
	return id, nil
}

func (a *API) get(w http.ResponseWriter, r *http.Request) {
	id, err := PIDParam(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	s, err := a.repo.Get(r.Context(), id)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, view(s))
}

func (a *API) create(w http.ResponseWriter, r *http.Request) {
	var in serverInput
	fields, err := httpapi.DecodeJSONFields(r, a.maxBody, &in)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if in.PID != nil {
		fields["pid"] = "is assigned by the server; leave it out"
	}
	var s Server
	in.apply(&s)
	if len(fields) > 0 {
		a.writeProblems(w, r, fields, s, 0)
		return
	}
	s, err = a.repo.Create(r.Context(), s)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	a.logger.Info("oidc server created", "pid", s.PID, "issuer", s.Issuer, "role", role(r))
	w.Header().Set("Location", strings.TrimSuffix(r.URL.Path, "/")+"/"+strconv.FormatInt(s.PID, 10))
	httpapi.WriteJSON(w, http.StatusCreated, view(s))
}

func (a *API) replace(w http.ResponseWriter, r *http.Request) {
	id, err := PIDParam(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	var in serverInput
	fields, err := httpapi.DecodeJSONFields(r, a.maxBody, &in)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if in.PID != nil && *in.PID != id {
		fields["pid"] = fmt.Sprintf("must be %d, the pid in the URL, or left out", id)
	}
	if len(fields) > 0 {
		cur, err := a.repo.Get(r.Context(), id)
		if err != nil {
			httpapi.WriteError(w, err)
			return
		}
		in.apply(&cur)
		a.writeProblems(w, r, fields, cur, id)
		return
	}
	s, err := a.repo.Update(r.Context(), id, func(s *Server) error {
		in.apply(s)
		return nil
	})
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	a.logger.Info("oidc server replaced", "pid", s.PID, "issuer", s.Issuer, "secretChanged", in.ClientSecret != nil, "role", role(r))
	httpapi.WriteJSON(w, http.StatusOK, view(s))
}

// writeProblems answers a request whose body had problems of its own
// (fields) with those and every problem of the definition s it would make
// (Repository.Problems), in one 400.
func (a *API) writeProblems(w http.ResponseWriter, r *http.Request, fields map[string]string, s Server, self int64) {
	issues, err := a.repo.Problems(r.Context(), s, self)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	for _, is := range issues {
		if _, ok := fields[is.Path]; !ok {
			fields[is.Path] = is.Message
		}
	}
	httpapi.WriteError(w, httpapi.Invalid(fields))
}

func (a *API) delete(w http.ResponseWriter, r *http.Request) {
	id, err := PIDParam(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if err := a.repo.Delete(r.Context(), id); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	a.logger.Info("oidc server deleted", "pid", id, "role", role(r))
	w.WriteHeader(http.StatusNoContent)
}

func role(r *http.Request) string {
	ro, _ := httpapi.RoleFromContext(r.Context())
	return ro
}

// VerifyReport is the answer of POST /api/oidc_servers/{id}/verify.
type VerifyReport struct {
	// OK is true when the document was fetched, its issuer matches and its
	// key set was fetched: the definition is usable.
	OK bool `json:"ok"`
	// WellKnownURL is the URL fetched.
	WellKnownURL string `json:"wellKnownUrl"`
	// Issuer is the issuer the document states, when it could be read.
	Issuer string `json:"issuer,omitempty"`
	// IssuerMatches says whether Issuer names the definition's issuer.
	IssuerMatches bool `json:"issuerMatches"`
	// Endpoints are the endpoints the document lists, by their discovery names.
	Endpoints map[string]string `json:"endpoints"`
	// JWKSKeys is the number of keys at jwks_uri, when it was fetched.
	JWKSKeys *int `json:"jwksKeys,omitempty"`
	// TokenEndpoint is where member tokens are refreshed, and
	// TokenEndpointFrom where it was found: definition,
	// openid-configuration or smart-configuration (FindTokenEndpoint).
	TokenEndpoint     string `json:"tokenEndpoint,omitempty"`
	TokenEndpointFrom string `json:"tokenEndpointFrom,omitempty"`
	// Problems make the definition unusable; Warnings deserve a look.
	Problems []string `json:"problems"`
	Warnings []string `json:"warnings"`
}

func (a *API) verify(w http.ResponseWriter, r *http.Request) {
	id, err := PIDParam(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	s, err := a.repo.Get(r.Context(), id)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.verifyTimeout)
	defer cancel()
	if a.client != nil {
		ctx = context.WithValue(ctx, oauth2.HTTPClient, a.client)
	}
	httpapi.WriteJSON(w, http.StatusOK, Check(ctx, s))
}

// Check fetches the discovery document and key set of s and reports what it
// found. It never fails: every problem is in the report, in words safe to
// show an administrator. Bound it with ctx.
func Check(ctx context.Context, s Server) VerifyReport {
	rep := VerifyReport{WellKnownURL: WellKnownURL(s), Endpoints: map[string]string{}, Problems: []string{}, Warnings: []string{}}
	if ep, err := FindTokenEndpoint(ctx, s); err != nil {
		msg, _ := errs.Public(err)
		rep.Problems = append(rep.Problems, "member tokens cannot be refreshed: "+msg)
	} else {
		rep.TokenEndpoint, rep.TokenEndpointFrom = ep.URL, ep.From
	}
	d, err := Discover(ctx, s)
	if d != nil {
		rep.Issuer = d.Issuer
		rep.IssuerMatches = d.Issuer != "" && SameIssuer(d.Issuer, s.Issuer)
		for name, v := range map[string]string{
			"authorization_endpoint": d.AuthorizationEndpoint, "token_endpoint": d.TokenEndpoint,
			"jwks_uri": d.JWKSURI, "userinfo_endpoint": d.UserinfoEndpoint,
			"revocation_endpoint": d.RevocationEndpoint, "introspection_endpoint": d.IntrospectionEndpoint,
		} {
			if v != "" {
				rep.Endpoints[name] = v
			}
		}
	}
	if err != nil {
		msg, _ := errs.Public(err)
		rep.Problems = append(rep.Problems, msg)
		return rep
	}
	if s.TokenEndpoint != "" && d.TokenEndpoint != "" && s.TokenEndpoint != d.TokenEndpoint {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("the definition's tokenEndpoint differs from the discovered %q; the definition's is used", d.TokenEndpoint))
	}
	if s.ClientSecret == "" {
		rep.Warnings = append(rep.Warnings, "no clientSecret is stored: refreshes will authenticate as a public client")
	}
	switch {
	case s.JWKText != "":
		rep.Warnings = append(rep.Warnings, "jwkText is set: tokens are verified with those keys, not with jwks_uri")
	case d.JWKSURI == "":
		rep.Problems = append(rep.Problems, "the discovery document has no jwks_uri: tokens from this issuer cannot be verified")
	default:
		var set struct {
			Keys []json.RawMessage `json:"keys"`
		}
		if err := getJSON(ctx, "oidcservers.check", d.JWKSURI, "key set (jwks_uri)", &set); err != nil {
			msg, _ := errs.Public(err)
			rep.Problems = append(rep.Problems, msg)
		} else {
			n := len(set.Keys)
			rep.JWKSKeys = &n
			if n == 0 {
				rep.Problems = append(rep.Problems, "the key set at jwks_uri has no keys")
			}
		}
	}
	rep.OK = len(rep.Problems) == 0
	return rep
}
