package pgdb

import (
	"context"
	"testing"

	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestSessionsPlanOnce: the sessions plan each prepared statement once
// (plan_cache_mode force_generic_plan), unless the URL says otherwise.
func TestSessionsPlanOnce(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Database(t)
	for _, c := range []struct{ name, url, want string }{
		{"default", url, "force_generic_plan"},
		{"set by the URL", url + "&plan_cache_mode=auto", "auto"},
	} {
		d, err := Open(ctx, c.url)
		if err != nil {
			t.Fatal(err)
		}
		var mode string
		err = d.pool.QueryRow(ctx, "SHOW plan_cache_mode").Scan(&mode)
		d.Close()
		if err != nil {
			t.Fatal(err)
		}
		if mode != c.want {
			t.Errorf("%s: plan_cache_mode %s, want %s", c.name, mode, c.want)
		}
	}
}
