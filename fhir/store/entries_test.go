package store

import (
	"context"
	"encoding/binary"
	"errors"
	"net/url"
	"runtime"
	"slices"
	"sort"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/search"
)

func entryStrings(es []search.Entry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Param + " " + e.Key + " " + string(e.Payload)
	}
	sort.Strings(out)
	return out
}

// TestPackedEntriesReadBackWhole: the index entries kept per resource
// (packed: shared keys once, parameters by number, no _id) read back as
// the entries extracted from the resource, _id's included.
func TestPackedEntriesReadBackWhole(t *testing.T) {
	_, st := openTestStore(t)
	ctx := context.Background()
	d := testDoc(t, "Observation", "o1", `{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}]},"subject":{"reference":"Patient/p1"},"effectiveDateTime":"2024-01-02","valueQuantity":{"value":72,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"}}`)
	st.Prepare(d)
	want := entryStrings(d.Entries)
	if err := st.Write(ctx, func(tx *Tx) error { _, err := tx.Put(d, PutOptions{}); return err }); err != nil {
		t.Fatal(err)
	}
	_ = st.View(ctx, func(tx *Tx) error {
		raw := tx.btx.Bucket([]byte("X:Observation")).Get([]byte("o1"))
		if raw[0] != entriesPacked {
			t.Fatalf("entries not packed: % x", raw[:8])
		}
		old := 0
		for _, e := range d.Entries {
			old += len(e.Param) + len(e.Key) + len(e.Payload) + 3
		}
		if len(raw) >= old*2/3 {
			t.Errorf("packed entries take %d bytes, unpacked %d", len(raw), old)
		}
		if got := entryStrings(tx.EntriesOf("Observation", "o1")); !slices.Equal(got, want) {
			t.Errorf("entries read back:\n%q\nwant\n%q", got, want)
		}
		for _, e := range tx.storedEntriesOf(raw) {
			if e.Param == "_id" {
				t.Errorf("an _id entry is stored: %v", e)
			}
		}
		return nil
	})
}

// TestIDSearchWithoutIDIndex: _id is answered from the resources
// themselves, for every form of the parameter (FHIR R4 search.html#id:
// a token), on the page path and the set path alike.
func TestIDSearchWithoutIDIndex(t *testing.T) {
	_, st := openTestStore(t)
	ctx := context.Background()
	for _, id := range []string{"a", "b", "c", "gone"} {
		if err := st.Write(ctx, func(tx *Tx) error {
			_, err := tx.Put(testDoc(t, "Patient", id, `{"resourceType":"Patient","gender":"`+map[bool]string{true: "male", false: "female"}[id == "b"]+`"}`), PutOptions{})
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Write(ctx, func(tx *Tx) error { _, err := tx.Delete("Patient", "gone", 0); return err }); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ query, want string }{
		{"_id=a", "a"},
		{"_id=a,c", "a c"},
		{"_id=|b", "b"},
		{"_id=urn:sys|b", ""},
		{"_id=gone", ""},
		{"_id=nope", ""},
		{"_id=a,b&gender=male", "b"},
		{"_id=a&_id=a,b", "a"},
		{"_id:not=a", "b c"},
		{"_id:missing=false", "a b c"},
		{"_id:missing=true", ""},
		{"gender=female&_sort=-_id", "c a"},
	} {
		vals, _ := url.ParseQuery(tc.query)
		q, err := st.Registry().Parse("Patient", vals, search.Options{})
		if err != nil {
			t.Fatalf("%s: %v", tc.query, err)
		}
		_ = st.View(ctx, func(tx *Tx) error {
			set, err := tx.Search(q)
			if err != nil {
				t.Fatal(err)
			}
			page, _, _, err := tx.SearchPage(q, nil, 10, nil)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.want
			if got := joinIDs(set); got != want {
				t.Errorf("%s: Search %q, want %q", tc.query, got, want)
			}
			if got := joinIDs(page); got != want {
				t.Errorf("%s: SearchPage %q, want %q", tc.query, got, want)
			}
			return nil
		})
	}
}

func joinIDs(ids []string) string {
	s := ""
	for i, id := range ids {
		if i > 0 {
			s += " "
		}
		s += id
	}
	return s
}

// TestUpgradeRemovesIDIndexKeepsOldEntries opens a database of format 2
// (an _id index, entries unpacked with their _id's): Open removes the _id
// index, the old entries still answer searches, and an update replaces
// them with packed ones.
func TestUpgradeRemovesIDIndexKeepsOldEntries(t *testing.T) {
	path := t.TempDir() + "/old.db"
	open := func() (DB, *Store) {
		db, err := OpenDB(context.Background(), path, DBOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st, err := Open(db, openRegistry(), nil)
		if err != nil {
			t.Fatal(err)
		}
		return db, st
	}
	ctx := context.Background()
	db, st := open()
	d := testDoc(t, "Patient", "p1", `{"resourceType":"Patient","gender":"female","name":[{"family":"Old"}]}`)
	st.Prepare(d)
	err := st.Write(ctx, func(tx *Tx) error {
		if _, err := tx.Put(d, PutOptions{}); err != nil {
			return err
		}
		// Put back what format 2 wrote: every entry, unpacked, and the
		// _id index.
		var b []byte
		for _, e := range d.Entries {
			for _, f := range []string{e.Param, e.Key, string(e.Payload)} {
				b = binary.AppendUvarint(b, uint64(len(f)))
				b = append(b, f...)
			}
		}
		if err := tx.btx.Bucket([]byte("X:Patient")).Put([]byte("p1"), b); err != nil {
			return err
		}
		ix, err := tx.btx.CreateBucketIfNotExists([]byte("I:Patient:_id"))
		if err != nil {
			return err
		}
		for _, e := range search.IDEntries("p1") {
			if err := ix.Put(tx.indexKey(e.Key, "p1"), nil); err != nil {
				return err
			}
		}
		return tx.btx.Bucket(metaBucket).Put(indexFormatKey, []byte("2"))
	})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	db.Close()

	db, st = open()
	defer db.Close()
	defer st.Close()
	count := func(query string) int {
		vals, _ := url.ParseQuery(query)
		q, err := st.Registry().Parse("Patient", vals, search.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var n int
		_ = st.View(ctx, func(tx *Tx) error {
			ids, _, _, err := tx.SearchPage(q, nil, 10, nil)
			n = len(ids)
			return err
		})
		return n
	}
	_ = st.View(ctx, func(tx *Tx) error {
		if tx.btx.Bucket([]byte("I:Patient:_id")) != nil {
			t.Error("the _id index is still there")
		}
		return nil
	})
	if n := count("_id=p1&family=old"); n != 1 {
		t.Errorf("old entries: _id and family find %d", n)
	}
	if err := st.Write(ctx, func(tx *Tx) error {
		_, err := tx.Put(testDoc(t, "Patient", "p1", `{"resourceType":"Patient","gender":"female","name":[{"family":"New"}]}`), PutOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n := count("family=old"); n != 0 {
		t.Errorf("after an update the old family finds %d", n)
	}
	if n := count("_id=p1&family=new"); n != 1 {
		t.Errorf("after an update _id and the new family find %d", n)
	}
	_ = st.View(ctx, func(tx *Tx) error {
		if raw := tx.btx.Bucket([]byte("X:Patient")).Get([]byte("p1")); raw[0] != entriesPacked {
			t.Error("the update did not pack the entries")
		}
		return nil
	})
}

// TestParamNumbersOfAFailedWriteInAGroup: the first write to index a
// parameter gives it a number; when that write fails in a commit group,
// what it numbered is taken back with it, and the next write of the group
// to index the parameter numbers it again: its entries read back whole
// and its search finds it.
func TestParamNumbersOfAFailedWriteInAGroup(t *testing.T) {
	_, st := openTestStore(t)
	ctx := context.Background()
	entered, release := make(chan struct{}), make(chan struct{})
	go func() {
		_ = st.Write(ctx, func(tx *Tx) error { close(entered); <-release; return nil })
	}()
	<-entered
	errc := make(chan error, 2)
	body := `{"resourceType":"Basic","code":{"coding":[{"system":"urn:t","code":"x"}]},"created":"2024-01-01"}`
	boom := errors.New("refused")
	go func() {
		errc <- st.Write(ctx, func(tx *Tx) error {
			if _, err := tx.Put(testDoc(t, "Basic", "failed", body), PutOptions{}); err != nil {
				return err
			}
			return boom
		})
	}()
	for st.Queued() < 1 {
		runtime.Gosched()
	}
	go func() {
		errc <- st.Write(ctx, func(tx *Tx) error {
			_, err := tx.Put(testDoc(t, "Basic", "kept", body), PutOptions{})
			return err
		})
	}()
	for st.Queued() < 2 {
		runtime.Gosched()
	}
	close(release)
	var failed int
	for range 2 {
		if err := <-errc; err != nil {
			if !errors.Is(err, boom) {
				t.Fatal(err)
			}
			failed++
		}
	}
	if failed != 1 {
		t.Fatalf("%d writes failed, want 1", failed)
	}
	d := testDoc(t, "Basic", "kept", body)
	st.Prepare(d)
	notTime := func(e search.Entry) bool { return e.Param == "_lastUpdated" } // set at each write
	want := entryStrings(slices.DeleteFunc(d.Entries, notTime))
	_ = st.View(ctx, func(tx *Tx) error {
		if got := entryStrings(slices.DeleteFunc(tx.EntriesOf("Basic", "kept"), notTime)); !slices.Equal(got, want) {
			t.Errorf("entries of the write that committed:\n%q\nwant\n%q", got, want)
		}
		if _, err := tx.Read("Basic", "failed"); err == nil {
			t.Error("the failed write's resource is there")
		}
		return nil
	})
	vals, _ := url.ParseQuery("code=urn:t|x&created=2024-01-01")
	q, err := st.Registry().Parse("Basic", vals, search.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = st.View(ctx, func(tx *Tx) error {
		ids, _, _, err := tx.SearchPage(q, nil, 10, nil)
		if err != nil || joinIDs(ids) != "kept" {
			t.Errorf("search: %v %q", err, ids)
		}
		return nil
	})
}
