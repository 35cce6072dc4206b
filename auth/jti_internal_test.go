package auth

import (
	"context"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
)

// TestSpentJTIsAreKeptUntilTheirAssertionExpires: a jti is refused again
// for the same client until its assertion's exp, accepted for another
// client, and forgotten by pruning once expired, so the bucket does not
// grow without end.
func TestSpentJTIsAreKeptUntilTheirAssertionExpires(t *testing.T) {
	t.Parallel()
	db, err := store.OpenDB(context.Background(), storetest.DSN(t), store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(db, search.NewRegistry(spec.R4()), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(); db.Close() })
	ctx := context.Background()
	now := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	exp := now.Add(5 * time.Minute)
	if err := useJTI(ctx, st, "client-a", "j1", exp, now); err != nil {
		t.Fatal(err)
	}
	if err := useJTI(ctx, st, "client-a", "j1", exp, now.Add(4*time.Minute)); err != errReplay {
		t.Errorf("replay within the lifetime: %v", err)
	}
	if err := useJTI(ctx, st, "client-b", "j1", exp, now); err != nil {
		t.Errorf("the same jti of another client: %v", err)
	}
	if n, err := pruneJTI(ctx, st, now.Add(time.Minute)); err != nil || n != 0 {
		t.Errorf("pruned %d live records: %v", n, err)
	}
	if n, err := pruneJTI(ctx, st, exp.Add(time.Second)); err != nil || n != 2 {
		t.Errorf("pruned %d of 2 expired records: %v", n, err)
	}
	left := 0
	_ = st.View(ctx, func(tx *store.Tx) error {
		return tx.KV(bucketJTI).Scan(nil, func(_, _ []byte) (bool, error) { left++; return true, nil })
	})
	if left != 0 {
		t.Errorf("%d records left after pruning", left)
	}
}
