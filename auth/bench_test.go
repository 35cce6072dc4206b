package auth_test

import (
	"context"
	"testing"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/auth"
	"github.com/p2pserver/p2pserver/auth/authtest"
)

// BenchmarkTokenEndpoint: one token request over loopback HTTP per
// iteration (a fresh assertion checked, its jti written to the database,
// a token signed), for each assertion algorithm. The signing of the
// assertion by the client is outside the timer.
//
//	go test -run '^$' -bench BenchmarkTokenEndpoint -benchtime 200x ./auth/
func BenchmarkTokenEndpoint(b *testing.B) {
	for _, alg := range []jose.SignatureAlgorithm{jose.RS384, jose.ES384} {
		b.Run(string(alg), func(b *testing.B) {
			e := newBenchEnv(b)
			k := authtest.NewKey(b, alg)
			id := authtest.MustRegister(b, e.base, adminToken, "bench", []string{"system/*.rs"}, k)
			assertions := make([]string, b.N)
			for i := range assertions {
				assertions[i] = k.Assertion(b, id, e.tokenURL())
			}
			b.ResetTimer()
			for i := range b.N {
				if r := authtest.RequestToken(b, e.tokenURL(), authtest.Form(assertions[i], "system/*.rs")); r.Status != 200 {
					b.Fatalf("%d %v", r.Status, r.JSON)
				}
			}
		})
	}
}

// BenchmarkVerifyBackend: what the FHIR guard spends on one backend
// token (signature, claims, the client looked up in the database, scopes
// held to its registration), without HTTP.
//
//	go test -run '^$' -bench BenchmarkVerifyBackend ./auth/
func BenchmarkVerifyBackend(b *testing.B) {
	e := newBenchEnv(b)
	k := authtest.NewKey(b, jose.ES384)
	id := authtest.MustRegister(b, e.base, adminToken, "bench", []string{"system/*.rs"}, k)
	tok := k.Token(b, id, e.tokenURL(), "system/*.rs")
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		if _, err := e.srv.VerifyBackend(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}

func newBenchEnv(b *testing.B) *env {
	// The token request limits would stop a benchmark; raise them.
	return newEnvTB(b, nil, func(c *auth.Config) {
		c.Limits = auth.Limits{AddressRate: 1e6, AddressBurst: 1e6, ClientRate: 1e6, ClientBurst: 1e6}
	})
}
