package store_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// TestHistorySinceKeepsVersionsCommittedOutOfStampOrder: a version's
// lastUpdated is stamped before its write transaction, so two writes
// (two requests of one process, or two processes whose clocks differ)
// can commit in the other order than their stamps. FHIR R4
// http.html#history: _since keeps every version updated at or after it;
// a version committed later with an earlier stamp must not hide one
// committed before it with a stamp at or after _since.
func TestHistorySinceKeepsVersionsCommittedOutOfStampOrder(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	early := doc(t, "Patient", "early", `{"resourceType":"Patient"}`)
	st.Prepare(early)
	time.Sleep(2 * time.Millisecond) // stamps differ (microsecond precision)
	late := doc(t, "Patient", "late", `{"resourceType":"Patient"}`)
	st.Prepare(late)
	for _, d := range []*store.Doc{late, early} { // committed out of stamp order
		if err := st.Write(ctx, func(tx *store.Tx) error {
			_, err := tx.Put(d, store.PutOptions{})
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	since := late.LastUpdated
	for _, typ := range []string{"", "Patient"} {
		var all, got, want []string
		if err := st.View(ctx, func(tx *store.Tx) error {
			p, err := tx.History(store.HistoryQuery{Type: typ, Count: 10})
			if err != nil {
				return err
			}
			for i, v := range p.Versions {
				all = append(all, v.ID)
				if i > 0 && v.LastUpdated.After(p.Versions[i-1].LastUpdated) {
					t.Errorf("history of %q: %s written after %s but stamped later", typ, p.Versions[i-1].ID, v.ID)
				}
				if !v.LastUpdated.Before(since) {
					want = append(want, v.ID)
				}
			}
			p, err = tx.History(store.HistoryQuery{Type: typ, Since: since, Count: 10})
			for _, v := range p.Versions {
				got = append(got, v.ID)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if len(all) != 2 || !slices.Equal(got, want) || !slices.Contains(got, "late") {
			t.Errorf("history of %q _since the later stamp: %v, want %v (of %v), with late", typ, got, want, all)
		}
	}
}
