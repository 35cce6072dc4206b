package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/internal/errs"
)

var reg = search.NewRegistry(spec.R4())

func openStore(tb testing.TB) *store.Store {
	tb.Helper()
	return storetest.Open(tb, reg, nil)
}

func doc(tb testing.TB, typ, id, body string) *store.Doc {
	tb.Helper()
	var m map[string]any
	dec := json.NewDecoder(stringsReader(body))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		tb.Fatal(err)
	}
	return &store.Doc{Type: typ, ID: id, Map: m, JSON: []byte(body)}
}

func put(tb testing.TB, st *store.Store, d *store.Doc) *store.Version {
	tb.Helper()
	var v *store.Version
	err := st.Write(context.Background(), func(tx *store.Tx) error {
		var err error
		v, err = tx.Put(d, store.PutOptions{})
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

func find(tb testing.TB, st *store.Store, typ, query string) []string {
	tb.Helper()
	vals, _ := url.ParseQuery(query)
	q, err := reg.Parse(typ, vals, search.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	var ids []string
	if err := st.View(context.Background(), func(tx *store.Tx) error {
		ids, err = tx.Search(q)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	return ids
}

// TestUpdateReplacesIndexEntries: an index entry the old version had and
// the new one does not must stop matching.
func TestUpdateReplacesIndexEntries(t *testing.T) {
	st := openStore(t)
	put(t, st, doc(t, "Patient", "a", `{"resourceType":"Patient","name":[{"family":"Old"}],"gender":"male"}`))
	if got := find(t, st, "Patient", "family=old"); len(got) != 1 {
		t.Fatalf("before update: %v", got)
	}
	put(t, st, doc(t, "Patient", "a", `{"resourceType":"Patient","name":[{"family":"New"}],"gender":"male"}`))
	if got := find(t, st, "Patient", "family=old"); len(got) != 0 {
		t.Errorf("old name still matches: %v", got)
	}
	if got := find(t, st, "Patient", "family=new&gender=male"); len(got) != 1 {
		t.Errorf("new name does not match: %v", got)
	}
	if err := st.Write(context.Background(), func(tx *store.Tx) error {
		_, err := tx.Delete("Patient", "a", 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if got := find(t, st, "Patient", "gender=male"); len(got) != 0 {
		t.Errorf("deleted resource still matches: %v", got)
	}
}

// TestFailedWriteDoesNotAffectOthers: writes committed together are
// isolated; one failing does not roll back the others, nor leave traces.
func TestFailedWriteDoesNotAffectOthers(t *testing.T) {
	st := openStore(t)
	var wg sync.WaitGroup
	errc := make(chan error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- st.Write(context.Background(), func(tx *store.Tx) error {
				if _, err := tx.Put(doc(t, "Patient", fmt.Sprintf("p%d", i), `{"resourceType":"Patient","gender":"female"}`), store.PutOptions{}); err != nil {
					return err
				}
				if i%10 == 0 {
					return errs.E("test", errs.Conflict, "refused")
				}
				return nil
			})
		}()
	}
	wg.Wait()
	close(errc)
	failed := 0
	for err := range errc {
		if err != nil {
			if !errs.Is(err, errs.Conflict) {
				t.Errorf("unexpected error %v", err)
			}
			failed++
		}
	}
	if failed != 10 {
		t.Errorf("%d writes failed, want 10", failed)
	}
	if got := find(t, st, "Patient", "gender=female"); len(got) != 90 {
		t.Errorf("%d patients stored, want 90", len(got))
	}
}

func TestHistoryPagingWhileWriting(t *testing.T) {
	st := openStore(t)
	for i := range 30 {
		put(t, st, doc(t, "Patient", fmt.Sprintf("h%d", i%7), `{"resourceType":"Patient"}`))
	}
	seen := 0
	var before uint64
	for {
		var page *store.HistoryPage
		if err := st.View(context.Background(), func(tx *store.Tx) error {
			var err error
			page, err = tx.History(store.HistoryQuery{Type: "Patient", Count: 8, Before: before})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		seen += len(page.Versions)
		put(t, st, doc(t, "Patient", "late", `{"resourceType":"Patient"}`)) // must not shift pages
		if page.Next == 0 {
			break
		}
		before = page.Next
	}
	if seen != 30 {
		t.Errorf("paged through %d versions, want 30", seen)
	}
}

type sr struct {
	s string
	i int
}

func (r *sr) Read(p []byte) (int, error) {
	if r.i >= len(r.s) {
		return 0, io.EOF
	}
	n := copy(p, r.s[r.i:])
	r.i += n
	return n, nil
}

func stringsReader(s string) *sr { return &sr{s: s} }

// TestFailedWriteIsTakenBackAlone: in a commit group, a write that fails
// after changing resources, indexes, a key-value bucket it created and
// sequences is taken back entirely, and the writes around it commit.
func TestFailedWriteIsTakenBackAlone(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	put(t, st, doc(t, "Observation", "before", obs(1)))
	entered, release := make(chan struct{}), make(chan struct{})
	go func() {
		_ = st.Write(ctx, func(tx *store.Tx) error { close(entered); <-release; return nil })
	}()
	<-entered
	errc := make(chan error, 3)
	write := func(fn func(tx *store.Tx) error) {
		go func() { errc <- st.Write(ctx, fn) }()
	}
	write(func(tx *store.Tx) error {
		_, err := tx.Put(doc(t, "Observation", "a", obs(2)), store.PutOptions{})
		return err
	})
	for st.Queued() < 1 {
		runtime.Gosched()
	}
	boom := errs.E("test", errs.Precondition, "refused")
	write(func(tx *store.Tx) error {
		if _, err := tx.Put(doc(t, "Observation", "b", obs(3)), store.PutOptions{}); err != nil {
			return err
		}
		if _, err := tx.Put(doc(t, "Observation", "before", obs(4)), store.PutOptions{}); err != nil {
			return err
		}
		kv := tx.KV("scratch")
		if _, err := kv.NextSequence(); err != nil {
			return err
		}
		if err := kv.Put([]byte("k"), []byte("v")); err != nil {
			return err
		}
		if _, err := tx.Delete("Observation", "a", 0); err != nil {
			return err
		}
		return boom
	})
	for st.Queued() < 2 {
		runtime.Gosched()
	}
	write(func(tx *store.Tx) error {
		_, err := tx.Put(doc(t, "Observation", "c", obs(5)), store.PutOptions{})
		return err
	})
	for st.Queued() < 3 {
		runtime.Gosched()
	}
	close(release)
	var failed int
	for range 3 {
		if err := <-errc; err != nil {
			if !errs.Is(err, errs.Precondition) {
				t.Fatalf("unexpected error %v", err)
			}
			failed++
		}
	}
	if failed != 1 {
		t.Fatalf("%d writes failed, want 1", failed)
	}
	if got := find(t, st, "Observation", "code=urn:b|c4"); len(got) != 0 {
		t.Errorf("the failed write's index entries remain: %v", got)
	}
	if got := find(t, st, "Observation", "code=urn:b|c1"); len(got) != 1 {
		t.Errorf("the index entries the failed write replaced are gone: %v", got)
	}
	if err := st.View(ctx, func(tx *store.Tx) error {
		for id, want := range map[string]int64{"before": 1, "a": 1, "c": 1} {
			v, err := tx.Read("Observation", id)
			if err != nil || v.VersionID != want {
				t.Errorf("Observation/%s: %v, %v", id, v, err)
			}
		}
		if _, err := tx.Read("Observation", "b"); !errs.Is(err, errs.NotFound) {
			t.Errorf("Observation/b written by the failed write: %v", err)
		}
		if v := tx.KV("scratch").Get([]byte("k")); v != nil {
			t.Errorf("the failed write's key-value entry remains")
		}
		page, err := tx.History(store.HistoryQuery{Count: 10})
		if err != nil {
			return err
		}
		if len(page.Versions) != 3 {
			t.Errorf("history has %d versions, want 3 (before, a, c)", len(page.Versions))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The next sequence continues as if the failed write never ran.
	if err := st.Write(ctx, func(tx *store.Tx) error {
		n, err := tx.KV("scratch").NextSequence()
		if n != 1 {
			t.Errorf("sequence %d, want 1", n)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// TestGroupIndexChanges: the index changes of a commit group are made
// together at its end, yet a write that searches sees those of the writes
// before it in the group and its own, and a write that fails after
// searching leaves none of its own behind.
func TestGroupIndexChanges(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	search := func(tx *store.Tx, query string) []string {
		vals, _ := url.ParseQuery(query)
		q, err := reg.Parse("Observation", vals, search.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ids, err := tx.Search(q)
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	entered, release := make(chan struct{}), make(chan struct{})
	go func() {
		_ = st.Write(ctx, func(tx *store.Tx) error { close(entered); <-release; return nil })
	}()
	<-entered
	type result struct {
		name string
		err  error
		seen []string
	}
	results := make(chan result, 3)
	queued := 0
	write := func(name string, fn func(tx *store.Tx) ([]string, error)) {
		go func() {
			var seen []string
			err := st.Write(ctx, func(tx *store.Tx) error {
				var err error
				seen, err = fn(tx)
				return err
			})
			results <- result{name, err, seen}
		}()
		queued++
		for st.Queued() < queued {
			runtime.Gosched()
		}
	}
	write("a", func(tx *store.Tx) ([]string, error) {
		_, err := tx.Put(doc(t, "Observation", "a", obs(2)), store.PutOptions{})
		return nil, err
	})
	write("b", func(tx *store.Tx) ([]string, error) {
		seen := search(tx, "code=urn:b|c2") // a's, made before b's turn
		if _, err := tx.Put(doc(t, "Observation", "b", obs(3)), store.PutOptions{}); err != nil {
			return nil, err
		}
		seen = append(seen, search(tx, "code=urn:b|c3")...) // its own
		return seen, errs.E("test", errs.Precondition, "refused")
	})
	write("c", func(tx *store.Tx) ([]string, error) {
		seen := search(tx, "code=urn:b|c3")
		if _, err := tx.Put(doc(t, "Observation", "c", obs(4)), store.PutOptions{}); err != nil {
			return nil, err
		}
		return seen, nil
	})
	close(release)
	for range 3 {
		r := <-results
		switch r.name {
		case "a", "c":
			if r.err != nil {
				t.Errorf("write %s: %v", r.name, r.err)
			}
			if r.name == "c" && len(r.seen) != 0 {
				t.Errorf("write c saw the failed write's index entries: %v", r.seen)
			}
		case "b":
			if !errs.Is(r.err, errs.Precondition) {
				t.Errorf("write b: %v, want its own error", r.err)
			}
			if !slices.Equal(r.seen, []string{"a", "b"}) {
				t.Errorf("write b saw %v, want [a b] (the write before it, then itself)", r.seen)
			}
		}
	}
	for query, want := range map[string][]string{"code=urn:b|c2": {"a"}, "code=urn:b|c3": nil, "code=urn:b|c4": {"c"}} {
		if got := find(t, st, "Observation", query); !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", query, got, want)
		}
	}
}

// TestWriteAlone: a write made with WriteAlone is committed in a group of
// its own: the writes queued before it are committed before it runs, those
// queued after it once it is committed, and when it fails nothing of it
// remains while the others are committed.
func TestWriteAlone(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	entered, release := make(chan struct{}), make(chan struct{})
	go func() {
		_ = st.Write(ctx, func(tx *store.Tx) error { close(entered); <-release; return nil })
	}()
	<-entered
	var aCommitted, bRan atomic.Bool
	errc := make(chan error, 3)
	queued := 0
	queue := func(f func() error) {
		go func() { errc <- f() }()
		queued++
		for st.Queued() < queued {
			runtime.Gosched()
		}
	}
	queue(func() error {
		return st.Write(ctx, func(tx *store.Tx) error {
			tx.AfterCommit(func() { aCommitted.Store(true) })
			_, err := tx.Put(doc(t, "Observation", "a", obs(2)), store.PutOptions{})
			return err
		})
	})
	boom := errs.E("test", errs.Precondition, "refused")
	queue(func() error {
		return st.WriteAlone(ctx, func(tx *store.Tx) error {
			bRan.Store(true)
			if !aCommitted.Load() {
				t.Error("the large write runs before the write queued before it was committed")
			}
			for i := range 50 {
				if _, err := tx.Put(doc(t, "Observation", fmt.Sprintf("b%d", i), obs(3)), store.PutOptions{}); err != nil {
					return err
				}
			}
			return boom
		})
	})
	queue(func() error {
		return st.Write(ctx, func(tx *store.Tx) error {
			if !bRan.Load() {
				t.Error("a write queued after the large one runs before it")
			}
			_, err := tx.Put(doc(t, "Observation", "c", obs(4)), store.PutOptions{})
			return err
		})
	})
	close(release)
	failed := 0
	for range 3 {
		if err := <-errc; err != nil {
			if !errs.Is(err, errs.Precondition) {
				t.Fatalf("unexpected error %v", err)
			}
			failed++
		}
	}
	if failed != 1 {
		t.Errorf("%d writes failed, want 1", failed)
	}
	for query, want := range map[string]int{"code=urn:b|c2": 1, "code=urn:b|c3": 0, "code=urn:b|c4": 1} {
		if got := find(t, st, "Observation", query); len(got) != want {
			t.Errorf("%s: %v, want %d", query, got, want)
		}
	}
}

// TestWriterHeld: the writer's busy time grows with each commit, and its
// longest group is no longer than the whole; a write that holds the writer
// (its fn waits) is counted for at least as long as it held it.
func TestWriterHeld(t *testing.T) {
	st := openStore(t)
	total0, _ := st.WriterHeld()
	const hold = 30 * time.Millisecond
	if err := st.Write(context.Background(), func(tx *store.Tx) error {
		time.Sleep(hold)
		_, err := tx.Put(doc(t, "Basic", "held", `{"resourceType":"Basic","code":{"text":"x"}}`), store.PutOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	total, longest := st.WriterHeld()
	if total-total0 < hold || longest < hold || longest > total {
		t.Errorf("WriterHeld: total %s (from %s), longest %s; the write held it %s", total, total0, longest, hold)
	}
}

// TestLargeWriteIndexChangesKeepTheirOrder: a write with more index
// changes than parallelSortOps has its buckets' changes sorted on several
// cores; the changes to one key must still be made in the order they were
// queued. Here each resource is created with code a, updated to b and back
// to a in the same write, so that the index key of code a is put, deleted
// and put again: made out of order, the resources would be lost to a
// search on a, or found on b.
func TestLargeWriteIndexChangesKeepTheirOrder(t *testing.T) {
	st := openStore(t)
	const n = 1000
	obsCode := func(i int, code string) *store.Doc {
		return doc(t, "Observation", fmt.Sprintf("order-%04d", i), fmt.Sprintf(`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:order","code":"%s"}]},"subject":{"reference":"Patient/p%d"},"effectiveDateTime":"2024-01-%02dT10:00:00Z","valueQuantity":{"value":%d,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"}}`, code, i, 1+i%28, i))
	}
	if err := st.WriteAlone(context.Background(), func(tx *store.Tx) error {
		for _, code := range []string{"a", "b", "a"} {
			for i := range n {
				if _, err := tx.Put(obsCode(i, code), store.PutOptions{}); err != nil {
					return err
				}
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := find(t, st, "Observation", "code=urn:order|a"); len(got) != n {
		t.Errorf("code a finds %d Observations, want %d", len(got), n)
	}
	if got := find(t, st, "Observation", "code=urn:order|b"); len(got) != 0 {
		t.Errorf("code b finds %d Observations, want none", len(got))
	}
}
