package smart

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
)

// Backend is this server's own authorization server for SMART Backend
// Services (SMART App Launch 2, "Backend Services"): the access tokens its
// token endpoint issues to registered backend clients, such as other
// payers pulling data system to system. Package auth implements it; the
// guard accepts its tokens beside those of the trusted issuers.
type Backend interface {
	// Endpoints says where the token endpoint and the key set are, and
	// which iss the backend's tokens carry.
	Endpoints() BackendEndpoints
	// VerifyBackend checks an access token whose iss is
	// Endpoints().Issuer: signed with one of the server's keys, meant for
	// this FHIR server, current, and issued to a client that is still
	// registered. The token it returns has Backend set and ClientID naming
	// the client. Errors are *errs.Error: Unauthorized for a token that is
	// not good.
	VerifyBackend(ctx context.Context, raw string) (*Token, error)
}

// BackendEndpoints describe a Backend for the SMART configuration and the
// CapabilityStatement.
type BackendEndpoints struct {
	// Issuer is the iss of the access tokens the backend issues; it must
	// differ from every trusted issuer.
	Issuer string
	// TokenEndpoint is the URL of the token endpoint (client_credentials
	// with a private_key_jwt client assertion).
	TokenEndpoint string
	// JWKSURI is where the public keys that sign the access tokens are
	// published.
	JWKSURI string
	// AssertionAlgs are the JWS algorithms accepted for client assertions
	// (token_endpoint_auth_signing_alg_values_supported).
	AssertionAlgs []string
	// Scopes are the scopes a backend client may ask for
	// (scopes_supported).
	Scopes []string
}

// BackendClient returns the clientId of the registered backend client
// whose access token (issued by this server's token endpoint) authorized
// the request, and false for any other request: admin tokens, tokens of
// trusted issuers, and requests without a token on an open server. What a
// backend client starts (a Bulk Data export, say) belongs to this id.
func BackendClient(ctx context.Context) (string, bool) {
	t := FromContext(ctx)
	if t == nil || !t.Backend || t.ClientID == "" {
		return "", false
	}
	return t.ClientID, true
}

// isBackendToken reports whether raw is a JWS whose iss is the backend's,
// without verifying anything: only to route the token to its verifier.
func (g *Guard) isBackendToken(raw string) bool {
	if g.backend == nil {
		return false
	}
	iss, ok := peekIssuer(raw)
	return ok && issuerKey(iss) == issuerKey(g.backend.Endpoints().Issuer)
}

// peekIssuer reads the iss claim of a compact JWS without verifying
// anything, not even the encoding of the signature: a token naming the
// backend's issuer goes to the backend, which refuses it if it is broken.
func peekIssuer(raw string) (string, bool) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return "", false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", false
	}
	var peek struct {
		Iss string `json:"iss"`
	}
	if err := json.Unmarshal(payload, &peek); err != nil {
		return "", false
	}
	return peek.Iss, true
}
