package oidcservers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/netguard"
)

// maxDocument caps what is read of a discovery document, JWKS or token
// response: real ones are a few kilobytes.
const maxDocument = 1 << 20

// defaultClient is used when the context carries no *http.Client under
// oauth2.HTTPClient: its connections are checked by netguard.Default after
// name resolution. Its timeout bounds each request; callers' contexts may
// bound them further.
var defaultClient = netguard.Default().Client(30 * time.Second)

// httpClient returns the client in ctx (the golang.org/x/oauth2 convention,
// which go-oidc follows too) or defaultClient.
func httpClient(ctx context.Context) *http.Client {
	if c, ok := ctx.Value(oauth2.HTTPClient).(*http.Client); ok && c != nil {
		return c
	}
	return defaultClient
}

// Discovery is the part of a provider's OpenID Connect discovery document the
// server uses or reports.
type Discovery struct {
	// WellKnownURL is where the document was fetched from.
	WellKnownURL string `json:"-"`

	Issuer                   string   `json:"issuer"`
	AuthorizationEndpoint    string   `json:"authorization_endpoint"`
	TokenEndpoint            string   `json:"token_endpoint"`
	JWKSURI                  string   `json:"jwks_uri"`
	UserinfoEndpoint         string   `json:"userinfo_endpoint"`
	RevocationEndpoint       string   `json:"revocation_endpoint"`
	IntrospectionEndpoint    string   `json:"introspection_endpoint"`
	IDTokenSigningAlgs       []string `json:"id_token_signing_alg_values_supported"`
	TokenEndpointAuthMethods []string `json:"token_endpoint_auth_methods_supported"`
}

// WellKnownURL is where a definition's discovery document lives: its
// authWellKnown, else the issuer plus /.well-known/openid-configuration.
func WellKnownURL(s Server) string {
	if s.AuthWellKnown != "" {
		return s.AuthWellKnown
	}
	return strings.TrimRight(s.Issuer, "/") + "/.well-known/openid-configuration"
}

// Discover fetches and checks the discovery document of s. The document's
// issuer must name the same issuer as the definition (SameIssuer: a trailing
// slash does not matter); a mismatch is an Unprocessable error, since tokens
// from that provider would not carry the issuer the definition expects.
//
// Errors are *errs.Error whose message is safe to show an administrator:
// Timeout, Transient (unreachable, 5xx), or Unprocessable (not a usable
// document). When the document was read but its issuer is missing or does
// not match, the document is returned with the error, for reports.
//
// Discover fetches the document itself rather than through go-oidc's
// NewProvider because the definition may name a well-known URL that is not
// derived from the issuer, and because go-oidc requires the issuer strings to
// be byte-for-byte equal.
func Discover(ctx context.Context, s Server) (*Discovery, error) {
	const op = "oidcservers.discover"
	u := WellKnownURL(s)
	var d Discovery
	if err := getJSON(ctx, op, u, "discovery document", &d); err != nil {
		return nil, err
	}
	d.WellKnownURL = u
	switch {
	case d.Issuer == "":
		return &d, errs.E(op, errs.Unprocessable, "the discovery document has no issuer")
	case !SameIssuer(d.Issuer, s.Issuer):
		return &d, errs.E(op, errs.Unprocessable, fmt.Sprintf("issuer mismatch: the discovery document says %q, the definition says %q", d.Issuer, s.Issuer))
	}
	return &d, nil
}

// getJSON GETs u and decodes a JSON object from it into v.
func getJSON(ctx context.Context, op, u, what string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return errs.E(op, errs.Unprocessable, fmt.Sprintf("the %s URL is not usable", what), err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := httpClient(ctx).Do(req)
	if err != nil {
		return transportError(op, what, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocument+1))
	if err != nil {
		return transportError(op, what, err)
	}
	switch {
	case resp.StatusCode >= 500:
		return errs.E(op, errs.Transient, fmt.Sprintf("fetching the %s: HTTP status %d", what, resp.StatusCode))
	case resp.StatusCode != http.StatusOK:
		return errs.E(op, errs.Unprocessable, fmt.Sprintf("fetching the %s: HTTP status %d", what, resp.StatusCode))
	case len(body) > maxDocument:
		return errs.E(op, errs.Unprocessable, fmt.Sprintf("the %s is larger than %d bytes", what, maxDocument))
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "" && mt != "application/json" && !strings.HasSuffix(mt, "+json") {
		return errs.E(op, errs.Unprocessable, fmt.Sprintf("the %s is not JSON (Content-Type %s)", what, mt))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return errs.E(op, errs.Unprocessable, fmt.Sprintf("the %s is not a valid JSON object of the expected shape", what), err)
	}
	return nil
}

// transportError classifies a failed HTTP exchange.
func transportError(op, what string, err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		return errs.E(op, errs.Timeout, fmt.Sprintf("fetching the %s timed out", what), err)
	case errors.Is(err, context.Canceled):
		return errs.E(op, errs.Transient, fmt.Sprintf("fetching the %s was cancelled", what), err)
	}
	return errs.E(op, errs.Transient, fmt.Sprintf("could not connect to fetch the %s", what), err)
}

// ErrNoTokenEndpoint is in the chain of the error FindTokenEndpoint (and a
// TokenSource's refresh) returns when no token endpoint is set or can be
// discovered for a definition: set tokenEndpoint in it.
var ErrNoTokenEndpoint = errors.New("oidcservers: no token endpoint")

// TokenEndpoint is where a definition's member tokens are refreshed.
type TokenEndpoint struct {
	URL string
	// From says where URL was found: "definition" (tokenEndpoint),
	// "openid-configuration" (OpenID discovery) or "smart-configuration"
	// (the source's FHIR server).
	From string
	// Basic is true when the client authenticates with HTTP Basic
	// (client_secret_basic), false for client_secret_post: the discovered
	// document lists only the latter.
	Basic bool
	// Methods are the token_endpoint_auth_methods_supported the
	// discovered document lists, if any.
	Methods []string
}

// smartConfiguration is the part of a FHIR server's
// .well-known/smart-configuration (SMART App Launch 2.x, "Retrieve
// .well-known/smart-configuration") used to find its token endpoint.
type smartConfiguration struct {
	Issuer                   string   `json:"issuer"`
	TokenEndpoint            string   `json:"token_endpoint"`
	TokenEndpointAuthMethods []string `json:"token_endpoint_auth_methods_supported"`
}

// SMARTConfigurationURL is where the source's FHIR server describes its
// authorization server: fhirEndpoint + /.well-known/smart-configuration.
func SMARTConfigurationURL(s Server) string {
	return strings.TrimRight(s.FHIREndpoint, "/") + "/.well-known/smart-configuration"
}

// FindTokenEndpoint finds where the member tokens of s are refreshed:
//
//  1. the definition's tokenEndpoint, when set;
//  2. else token_endpoint of its OpenID discovery document (authWellKnown,
//     or the issuer's /.well-known/openid-configuration; see Discover);
//  3. else, when the definition names no authWellKnown, token_endpoint of
//     the SMART configuration of its fhirEndpoint
//     (/.well-known/smart-configuration, required there by SMART App Launch
//     2.x), provided that document names no other issuer.
//
// A definition therefore needs tokenEndpoint only when neither document
// says where the token endpoint is. The error says what was tried: Transient
// or Timeout when a document could not be fetched (worth trying again),
// else Unprocessable with ErrNoTokenEndpoint in its chain.
func FindTokenEndpoint(ctx context.Context, s Server) (TokenEndpoint, error) {
	const op = "oidcservers.token_endpoint"
	if s.TokenEndpoint != "" {
		return TokenEndpoint{URL: s.TokenEndpoint, From: "definition", Basic: true}, nil
	}
	var tried []string
	transient := false
	note := func(what string, err error) {
		msg, _ := errs.Public(err)
		tried = append(tried, what+": "+msg)
		if k := errs.KindOf(err); k == errs.Transient || k == errs.Timeout {
			transient = true
		}
	}
	d, err := Discover(ctx, s)
	switch {
	case err == nil && d.TokenEndpoint != "":
		return TokenEndpoint{URL: d.TokenEndpoint, From: "openid-configuration", Basic: basicAuth(d.TokenEndpointAuthMethods)}, nil
	case err == nil:
		tried = append(tried, WellKnownURL(s)+" lists no token_endpoint")
	default:
		note(WellKnownURL(s), err)
	}
	if s.AuthWellKnown == "" && s.FHIREndpoint != "" {
		u := SMARTConfigurationURL(s)
		var sc smartConfiguration
		err := getJSON(ctx, op, u, "SMART configuration", &sc)
		switch {
		case err != nil:
			note(u, err)
		case sc.Issuer != "" && !SameIssuer(sc.Issuer, s.Issuer):
			tried = append(tried, fmt.Sprintf("%s names the issuer %q, not the definition's", u, sc.Issuer))
		case sc.TokenEndpoint == "":
			tried = append(tried, u+" lists no token_endpoint")
		default:
			return TokenEndpoint{URL: sc.TokenEndpoint, From: "smart-configuration", Basic: basicAuth(sc.TokenEndpointAuthMethods)}, nil
		}
	}
	msg := "no token endpoint to refresh the member's tokens was found (" + strings.Join(tried, "; ") + "); set tokenEndpoint in the OIDC server definition"
	if transient {
		return TokenEndpoint{}, errs.E(op, errs.Transient, msg, ErrNoTokenEndpoint)
	}
	return TokenEndpoint{}, errs.E(op, errs.Unprocessable, msg, ErrNoTokenEndpoint)
}

// basicAuth reports whether a client authenticates with HTTP Basic at a
// token endpoint listing methods: yes unless only client_secret_post is
// listed (Basic is the default, RFC 6749 section 2.3.1).
func basicAuth(methods []string) bool {
	return len(methods) == 0 || slices.Contains(methods, "client_secret_basic") || !slices.Contains(methods, "client_secret_post")
}
