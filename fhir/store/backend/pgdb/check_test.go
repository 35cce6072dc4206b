package pgdb

import (
	"errors"
	"strings"
	"testing"
)

// TestCheckNamesTheProblemNotThePassword: a PostgreSQL URL pgx cannot use
// is refused without connecting, saying what is wrong with it, and the
// message never carries the password, wherever the URL puts it (the
// userinfo, percent-encoded or not, a password parameter), even when the
// parser's own message would quote it.
func TestCheckNamesTheProblemNotThePassword(t *testing.T) {
	for _, c := range []struct {
		url, want string
	}{
		{"postgres://p2p:s3cret@db.example/p2p?pool_max_conns=abc", "cannot parse pool_max_conns"},
		{"postgres://p2p:s3cret@db.example/p2p?sslmode=sometimes", "sslmode is invalid"},
		{"postgres://p2p:s3cret@db.example/p2p?connect_timeout=soon", "invalid connect_timeout"},
		{"postgres://p2p:s3cret@db.example:fivefour/p2p", "not a valid PostgreSQL URL"},
		{"postgres://p2p:s3%zzcret@db.example/p2p", "not a valid PostgreSQL URL"},
		{"postgres://p2p@db.example/p2p?password=s3cret&pool_max_conns=abc", "cannot parse pool_max_conns"},
	} {
		err := Check(c.url)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "s3%zzcret") {
			t.Errorf("Check(%s): %v; want it to say %q without the password", c.url, err, c.want)
		}
	}
	// URL schemes are case-insensitive (RFC 3986 section 3.1): one that
	// IsPostgres takes is one Open can use.
	for _, u := range []string{"postgres://p2p:s3cret@db.example:5432/p2p?sslmode=require&pool_max_conns=8", "POSTGRES://p2p@db.example/p2p", "PostgreSQL://p2p@db.example/p2p"} {
		if err := Check(u); err != nil {
			t.Errorf("a good URL: %v", err)
		}
	}
	// A parser message that quotes the password after the URL is dropped.
	for _, u := range []string{"postgres://p2p:s3cret@db.example/p2p", "postgres://p2p:s3%41cret@db.example/p2p", "postgres://p2p@db.example/p2p?password=s3cret"} {
		leak := errors.New("cannot parse `" + u + "`: bad password s3cret s3Acret")
		if err := invalidURL(u, leak); strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "s3Acret") || !strings.HasSuffix(err.Error(), "not a valid PostgreSQL URL") {
			t.Errorf("%s: %v", u, err)
		}
	}
}
