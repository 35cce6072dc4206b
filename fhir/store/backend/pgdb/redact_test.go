package pgdb_test

import (
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store/backend/pgdb"
)

// TestRedactHidesEverySecret: a PostgreSQL URL written to a log or an
// error (Redact, Check's error) shows none of the secrets pgx takes in it:
// the user's password in the user information or as ?password=, and the
// client key's password, ?sslpassword= (percent-encoded or not).
func TestRedactHidesEverySecret(t *testing.T) {
	for _, u := range []string{
		"postgres://p2p:s3cret@db.example/p2p?sslmode=require",
		"postgres://p2p:s3%63ret@db.example/p2p?sslmode=bogus",
		"postgres://p2p@db.example/p2p?password=s3cret&sslmode=bogus",
		"postgres://p2p@db.example/p2p?sslpassword=s3cret&sslmode=require&sslkey=/k.pem&sslcert=/c.pem",
		"postgres://p2p@db.example/p2p?sslpassword=s3cret&sslmode=bogus",
		"postgres://p2p@db.example/p2p?sslpassword=s3%63ret&connect_timeout=x",
		"postgres://p2p:s3cret@db.example/p2p?password=s3cret&pool_max_conns=x",
	} {
		if r := pgdb.Redact(u); strings.Contains(r, "s3cret") || strings.Contains(r, "s3%63ret") {
			t.Errorf("Redact(%s) = %s", u, r)
		}
		if err := pgdb.Check(u); err != nil && (strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "s3%63ret")) {
			t.Errorf("Check(%s): %v", u, err)
		}
	}
}
