package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
)

// MinTokenLength is the shortest bearer token NewAuthorizer accepts. Tokens
// are compared in constant time, but a short one can still be guessed.
const MinTokenLength = 16

// Role is a named set of bearer tokens, such as "admin" or "back-office".
type Role struct {
	// Name identifies the role in Require and RoleFromContext.
	Name string
	// Setting says how an operator configures the tokens; it is quoted in the
	// log line written when a route is refused because the role has none,
	// for example "-admin-token or P2P_ADMIN_TOKEN".
	Setting string
	// Tokens are the accepted bearer tokens. Empty means nobody holds the role.
	Tokens []string
}

// Authorizer checks "Authorization: Bearer <token>" against the tokens of a
// few roles. Tokens are kept only as SHA-256 digests and compared in constant
// time; every configured token is compared on every request, so timing does
// not reveal which one, or whether any, matched.
type Authorizer struct {
	logger *slog.Logger
	roles  []roleDigests
}

type roleDigests struct {
	Role
	digests [][sha256.Size]byte
}

// NewAuthorizer builds an Authorizer. It refuses tokens shorter than
// MinTokenLength, two roles with the same name, and one token given to two
// roles (a request must map to exactly one role).
func NewAuthorizer(logger *slog.Logger, roles ...Role) (*Authorizer, error) {
	if logger == nil {
		logger = slog.Default()
	}
	a := &Authorizer{logger: logger}
	owner := map[[sha256.Size]byte]string{}
	for _, r := range roles {
		if r.Name == "" {
			return nil, fmt.Errorf("httpapi: role without a name")
		}
		if _, ok := a.role(r.Name); ok {
			return nil, fmt.Errorf("httpapi: role %q given twice", r.Name)
		}
		rd := roleDigests{Role: Role{Name: r.Name, Setting: r.Setting}}
		for i, tok := range r.Tokens {
			if len(tok) < MinTokenLength {
				return nil, fmt.Errorf("httpapi: %s token %d is shorter than %d characters (set by %s)", r.Name, i+1, MinTokenLength, r.Setting)
			}
			d := sha256.Sum256([]byte(tok))
			if prev, ok := owner[d]; ok {
				if prev == r.Name {
					continue
				}
				return nil, fmt.Errorf("httpapi: the same token is configured for roles %q and %q", prev, r.Name)
			}
			owner[d] = r.Name
			rd.digests = append(rd.digests, d)
		}
		a.roles = append(a.roles, rd)
	}
	return a, nil
}

func (a *Authorizer) role(name string) (roleDigests, bool) {
	for _, r := range a.roles {
		if r.Name == name {
			return r, true
		}
	}
	return roleDigests{}, false
}

// SplitTokens splits a comma-separated flag or environment value into tokens,
// dropping blanks, so "a, b," gives ["a" "b"].
func SplitTokens(s string) []string {
	var out []string
	for _, t := range strings.Split(s, ",") {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, t)
		}
	}
	return out
}

type roleKey struct{}

// RoleFromContext returns the role that authenticated the request, inside a
// handler behind Require.
func RoleFromContext(ctx context.Context) (string, bool) {
	r, ok := ctx.Value(roleKey{}).(string)
	return r, ok
}

// Require returns middleware that lets a request through only with a bearer
// token of one of the named roles. It answers
//
//   - 403 when none of those roles has a token configured, and logs once how
//     to configure one;
//   - 401 with WWW-Authenticate when the token is missing or unknown;
//   - 403 when the token belongs to another role.
//
// Require panics on a role name the Authorizer does not know: that is a
// wiring mistake, found at start-up.
func (a *Authorizer) Require(names ...string) func(http.Handler) http.Handler {
	var configured bool
	var settings []string
	for _, n := range names {
		r, ok := a.role(n)
		if !ok {
			panic(fmt.Sprintf("httpapi: Require of unknown role %q", n))
		}
		configured = configured || len(r.digests) > 0
		if r.Setting != "" {
			settings = append(settings, r.Setting)
		}
	}
	var once sync.Once
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !configured {
				once.Do(func() {
					a.logger.Warn("api: request refused because no token is configured for the route's role",
						"roles", strings.Join(names, ", "), "configure", strings.Join(settings, "; "))
				})
				WriteError(w, Errorf(http.StatusForbidden, CodeForbidden,
					"this operation is disabled: the server has no %s token configured", strings.Join(names, " or ")))
				return
			}
			tok, ok := bearer(r)
			if !ok {
				w.Header().Set("WWW-Authenticate", `Bearer realm="p2pserver"`)
				WriteError(w, Errorf(http.StatusUnauthorized, CodeUnauthorized, "missing bearer token"))
				return
			}
			role := a.match(tok)
			if role == "" {
				w.Header().Set("WWW-Authenticate", `Bearer realm="p2pserver", error="invalid_token"`)
				WriteError(w, Errorf(http.StatusUnauthorized, CodeUnauthorized, "invalid bearer token"))
				return
			}
			for _, n := range names {
				if n == role {
					next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), roleKey{}, role)))
					return
				}
			}
			WriteError(w, Errorf(http.StatusForbidden, CodeForbidden, "the %s role may not perform this operation", role))
		})
	}
}

// match returns the role owning tok, or "". It compares tok with every
// configured token, without stopping at a match.
func (a *Authorizer) match(tok string) string {
	d := sha256.Sum256([]byte(tok))
	found := ""
	for _, r := range a.roles {
		for _, cand := range r.digests {
			if subtle.ConstantTimeCompare(d[:], cand[:]) == 1 {
				found = r.Name
			}
		}
	}
	return found
}

// bearer extracts the token of an "Authorization: Bearer" header. The scheme
// is case-insensitive (RFC 7235).
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// RoleAdmin is the name of the administrator role.
const RoleAdmin = "admin"

// Admin returns middleware that admits only the admin tokens: the common case
// of NewAuthorizer with one role, configured by -admin-token / P2P_ADMIN_TOKEN.
func Admin(logger *slog.Logger, tokens []string) (func(http.Handler) http.Handler, error) {
	a, err := NewAuthorizer(logger, Role{Name: RoleAdmin, Setting: "-admin-token or P2P_ADMIN_TOKEN", Tokens: tokens})
	if err != nil {
		return nil, err
	}
	return a.Require(RoleAdmin), nil
}
