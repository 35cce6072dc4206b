package store_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
)

// TestWritesOfOneGroupSeeEachOther: the writes of one commit group run
// one after the other in one database transaction, the group's current
// versions read at once before them (WriteReading): each write must see
// what the writes before it in the group wrote or took back, never the
// version read for the group (FHIR R4 http.html#concurrency: If-Match
// compares with the current version). The writes are queued behind a
// write that holds the writer, so that they make one group.
func TestWritesOfOneGroupSeeEachOther(t *testing.T) {
	st := openStore(t)
	ctx := context.Background()
	seed := func(id string) {
		put(t, st, doc(t, "Patient", id, `{"resourceType":"Patient","gender":"other"}`))
	}
	seed("upd")
	seed("del")
	seed("fail")
	p := func(id, body string) *store.Doc {
		return doc(t, "Patient", id, `{"resourceType":"Patient",`+body+`}`)
	}
	ident := func(v string) string {
		return `"identifier":[{"system":"urn:grp","value":"` + v + `"}]`
	}
	boom := errors.New("taken back")
	type write struct {
		name  string
		reads []store.Key
		fn    func(tx *store.Tx) (string, error) // what it saw
		want  string
	}
	key := func(id string) []store.Key { return []store.Key{{Type: "Patient", ID: id}} }
	putIfMatch := func(id string, v int64) func(tx *store.Tx) (string, error) {
		return func(tx *store.Tx) (string, error) {
			got, err := tx.Put(p(id, `"gender":"male"`), store.PutOptions{IfMatch: v})
			if err != nil {
				return "", err
			}
			return fmt.Sprint(got.VersionID), nil
		}
	}
	current := func(id string) func(tx *store.Tx) (string, error) {
		return func(tx *store.Tx) (string, error) {
			vid, deleted, ok := tx.CurrentVersion("Patient", id)
			return fmt.Sprintf("%d %v %v", vid, deleted, ok), nil
		}
	}
	condCreate := func(v string) func(tx *store.Tx) (string, error) {
		return func(tx *store.Tx) (string, error) {
			q, err := reg.Parse("Patient", url.Values{"identifier": {"urn:grp|" + v}}, search.Options{})
			if err != nil {
				return "", err
			}
			ids, err := tx.Search(q)
			if err != nil || len(ids) > 0 {
				return fmt.Sprintf("found %d", len(ids)), err
			}
			_, err = tx.Put(p("cc-"+v+fmt.Sprint(time.Now().UnixNano()), ident(v)), store.PutOptions{})
			return "created", err
		}
	}
	writes := []write{
		{"update at version 1", key("upd"), putIfMatch("upd", 1), "2"},
		{"update at the version the previous write made", key("upd"), putIfMatch("upd", 2), "3"},
		{"update at the version read for the group", key("upd"), putIfMatch("upd", 1), "error"},
		{"delete", key("del"), func(tx *store.Tx) (string, error) {
			v, err := tx.Delete("Patient", "del", 0)
			if err != nil || v == nil {
				return "", err
			}
			return fmt.Sprint(v.VersionID), nil
		}, "2"},
		{"read after the delete", key("del"), current("del"), "2 true true"},
		{"update after the delete", key("del"), putIfMatch("del", 2), "3"},
		{"create", key("new"), func(tx *store.Tx) (string, error) {
			v, err := tx.Put(p("new", ident("n")), store.PutOptions{CreateOnly: true})
			if err != nil {
				return "", err
			}
			return fmt.Sprint(v.VersionID), nil
		}, "1"},
		{"create of the same id", key("new"), func(tx *store.Tx) (string, error) {
			_, err := tx.Put(p("new", ident("n")), store.PutOptions{CreateOnly: true})
			return "", err
		}, "error"},
		{"conditional create of what the create made", nil, condCreate("n"), "found 1"},
		{"conditional create", nil, condCreate("m"), "created"},
		{"conditional create again", nil, condCreate("m"), "found 1"},
		{"update taken back", key("fail"), func(tx *store.Tx) (string, error) {
			if _, err := tx.Put(p("fail", `"gender":"male"`), store.PutOptions{}); err != nil {
				return "", err
			}
			return "", boom
		}, "error"},
		{"read after it", key("fail"), current("fail"), "1 false true"},
		{"update after it", key("fail"), putIfMatch("fail", 1), "2"},
	}
	hold := make(chan struct{})
	held := make(chan error, 1)
	go func() {
		held <- st.Write(ctx, func(tx *store.Tx) error { <-hold; return nil })
	}()
	time.Sleep(50 * time.Millisecond) // the writer runs the holding write
	got := make([]string, len(writes))
	done := make([]chan error, len(writes))
	for i, w := range writes {
		done[i] = make(chan error, 1)
		go func() {
			done[i] <- st.WriteReading(ctx, w.reads, func(tx *store.Tx) error {
				s, err := w.fn(tx)
				got[i] = s
				return err
			})
		}()
		time.Sleep(5 * time.Millisecond) // queued in this order
	}
	close(hold)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	for i, w := range writes {
		err := <-done[i]
		res := got[i]
		if err != nil {
			res = "error"
		}
		if res != w.want {
			t.Errorf("%s: %q (%v), want %q", w.name, res, err, w.want)
		}
	}
}
