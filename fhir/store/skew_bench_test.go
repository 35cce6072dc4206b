package store_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
)

// BenchmarkSkewedCode searches Observation?code on a skewed table: 10,000
// Observations have code urn:b|common and one has urn:b|rare; a page of
// 20. It reports each search's median time (p50-ns). On PostgreSQL the
// sessions' plans are generic (plan_cache_mode force_generic_plan, see
// pgdb.sessionParams), planned once without the value searched; run with
// P2P_SKEW_PLAN=auto to compare with PostgreSQL's default, which plans
// again with the value.
func BenchmarkSkewedCode(b *testing.B) {
	const n = 10000
	dsn := storetest.DSN(b)
	if mode := strings.TrimSpace(os.Getenv("P2P_SKEW_PLAN")); mode != "" && store.IsPostgres(dsn) {
		dsn += "&plan_cache_mode=" + url.QueryEscape(mode)
	}
	db := storetest.OpenDB(b, dsn)
	st, err := store.Open(db, reg, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { st.Close(); db.Close() }()
	const chunk = 1000
	for i := 0; i <= n; i += chunk {
		if err := st.Write(context.Background(), func(tx *store.Tx) error {
			for j := i; j < min(i+chunk, n+1); j++ {
				code := "common"
				if j == n {
					code = "rare"
				}
				body := strings.Replace(obs(j), `"coding":[`, `"coding":[{"system":"urn:b","code":"`+code+`"},`, 1)
				if _, err := tx.Put(doc(b, "Observation", fmt.Sprintf("o%06d", j), body), store.PutOptions{}); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	if store.IsPostgres(dsn) {
		time.Sleep(2 * time.Second) // the background ANALYZE of a young table
	}
	for _, c := range []struct {
		code string
		hits int
	}{{"rare", 1}, {"common", 20}} {
		q, err := reg.Parse("Observation", url.Values{"code": {"urn:b|" + c.code}}, search.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Run(c.code, func(b *testing.B) {
			took := make([]time.Duration, 0, b.N)
			for range b.N {
				t0 := time.Now()
				if err := st.View(context.Background(), func(tx *store.Tx) error {
					ids, _, _, err := tx.SearchPage(q, nil, 20, nil)
					if err == nil && len(ids) != c.hits {
						b.Fatalf("%d ids, want %d", len(ids), c.hits)
					}
					return err
				}); err != nil {
					b.Fatal(err)
				}
				took = append(took, time.Since(t0))
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)/2].Nanoseconds()), "p50-ns")
		})
	}
}
