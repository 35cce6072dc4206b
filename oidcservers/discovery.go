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
