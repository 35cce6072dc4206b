package store_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// TestScanPrefixesIsAScanOfEachPrefix: ScanPrefixes gives, for each
// prefix, what a Scan from it gives up to its last key, whatever the
// prefix (empty, ending in 0xff bytes, one that is another's prefix,
// one no key has), in a read and in a write that has changed keys
// around them (the changes win over what the database holds), and
// stops a prefix where fn says so.
func TestScanPrefixesIsAScanOfEachPrefix(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	keys := []string{"a", "a\x00", "a\x00x", "a\x00y", "ab", "ab\x00z", "b\x00", "b\xff", "b\xff\xff", "b\xff\xff\x01", "c\x00q"}
	if err := st.Write(ctx, func(tx *store.Tx) error {
		for i, k := range keys {
			if err := tx.KV("scanprefixes").Put([]byte(k), []byte(fmt.Sprint(i))); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	prefixes := []string{"a\x00", "", "b\xff", "\xff", "ab", "a", "zz", "b\xff\xff", "c\x00", "a\x00"}
	// scan is the reference: a Scan from the prefix, stopped at the
	// first key without it or after stop keys.
	scan := func(tx *store.Tx, p string, stop int) []string {
		var out []string
		if err := tx.KV("scanprefixes").Scan([]byte(p), func(k, v []byte) (bool, error) {
			if !bytes.HasPrefix(k, []byte(p)) {
				return false, nil
			}
			out = append(out, fmt.Sprintf("%q=%s", k, v))
			return len(out) < stop, nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	check := func(what string, tx *store.Tx, stop int) {
		t.Helper()
		ps := make([][]byte, len(prefixes))
		for i, p := range prefixes {
			ps[i] = []byte(p)
		}
		got := make([][]string, len(prefixes))
		if err := tx.KV("scanprefixes").ScanPrefixes(ps, func(i int, k, v []byte) (bool, error) {
			got[i] = append(got[i], fmt.Sprintf("%q=%s", k, v))
			return len(got[i]) < stop, nil
		}); err != nil {
			t.Fatal(err)
		}
		for i, p := range prefixes {
			if want := scan(tx, p, stop); !slices.Equal(got[i], want) {
				t.Errorf("%s, prefix %q (stop after %d): got %v, want %v", what, p, stop, got[i], want)
			}
		}
	}
	for _, stop := range []int{1, 2, 100} {
		if err := st.View(ctx, func(tx *store.Tx) error {
			check("read", tx, stop)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Write(ctx, func(tx *store.Tx) error {
		kv := tx.KV("scanprefixes")
		for _, k := range []string{"a\x00x", "b\xff\xff"} {
			if err := kv.Delete([]byte(k)); err != nil {
				return err
			}
		}
		for _, k := range []string{"a\x00a", "a\x00z", "b\xff\x00", "zz"} {
			if err := kv.Put([]byte(k), []byte("new")); err != nil {
				return err
			}
		}
		for _, stop := range []int{1, 2, 100} {
			check("write", tx, stop)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestPrefetchedReadsAreReads: what Tx.Prefetch and KV.Prefetch read is
// what the reads that follow return, in a read and in a write that
// changed some of it before and after the prefetch: present, absent and
// deleted resources and keys.
func TestPrefetchedReadsAreReads(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	for _, id := range []string{"p1", "p2", "gone"} {
		put(t, st, doc(t, "Patient", id, `{"resourceType":"Patient","gender":"female"}`))
	}
	put(t, st, doc(t, "Observation", "o1", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}`))
	if err := st.Write(ctx, func(tx *store.Tx) error {
		if _, err := tx.Delete("Patient", "gone", 0); err != nil {
			return err
		}
		for _, k := range []string{"k1", "k2"} {
			if err := tx.KV("prefetched").Put([]byte(k), []byte("v-"+k)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	keys := []store.Key{{Type: "Patient", ID: "p1"}, {Type: "Patient", ID: "p2"}, {Type: "Patient", ID: "gone"},
		{Type: "Patient", ID: "never"}, {Type: "Observation", ID: "o1"}, {Type: "Observation", ID: "none"}, {Type: "Encounter", ID: "e"}}
	kvKeys := [][]byte{[]byte("k1"), []byte("k2"), []byte("k3")}
	// seen is everything the reads of keys return, as text.
	seen := func(tx *store.Tx) string {
		var b bytes.Buffer
		for _, k := range keys {
			vid, deleted, ok := tx.CurrentVersion(k.Type, k.ID)
			v, err := tx.Read(k.Type, k.ID)
			fmt.Fprintf(&b, "%s/%s: %d %v %v; ", k.Type, k.ID, vid, deleted, ok)
			if v != nil {
				// Not the JSON: its lastUpdated differs between writes.
				fmt.Fprintf(&b, "%d male:%v ", v.VersionID, bytes.Contains(v.JSON, []byte(`"gender":"male"`)))
			}
			fmt.Fprintf(&b, "%v; %d entries\n", err != nil, len(tx.EntriesOf(k.Type, k.ID)))
		}
		for _, k := range kvKeys {
			fmt.Fprintf(&b, "%s=%q %v\n", k, tx.KV("prefetched").Get(k), tx.KV("prefetched").Has(k))
		}
		return b.String()
	}
	var want string
	if err := st.View(ctx, func(tx *store.Tx) error {
		want = seen(tx)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := st.View(ctx, func(tx *store.Tx) error {
		tx.Prefetch(keys)
		tx.KV("prefetched").Prefetch(kvKeys)
		if got := seen(tx); got != want {
			t.Errorf("read, prefetched:\n%s\nwant:\n%s", got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// In a write: changed before the prefetch, and after it.
	change := func(tx *store.Tx, id, k string) error {
		if _, err := tx.Put(doc(t, "Patient", id, `{"resourceType":"Patient","gender":"male"}`), store.PutOptions{}); err != nil {
			return err
		}
		return tx.KV("prefetched").Put([]byte(k), []byte("changed"))
	}
	var unprefetched string
	if err := st.Write(ctx, func(tx *store.Tx) error {
		if err := change(tx, "p2", "k2"); err != nil {
			return err
		}
		if err := change(tx, "never", "k3"); err != nil {
			return err
		}
		unprefetched = seen(tx)
		return errTakeBack
	}); err != errTakeBack {
		t.Fatal(err)
	}
	if err := st.Write(ctx, func(tx *store.Tx) error {
		if err := change(tx, "p2", "k2"); err != nil {
			return err
		}
		tx.Prefetch(keys)
		tx.KV("prefetched").Prefetch(kvKeys)
		if err := change(tx, "never", "k3"); err != nil {
			return err
		}
		if got := seen(tx); got != unprefetched {
			t.Errorf("write, prefetched:\n%s\nwant:\n%s", got, unprefetched)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

var errTakeBack = fmt.Errorf("taken back")
