package store

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/search"
)

// TestIndexIDForms: an id that is a lowercase UUID is kept in 16 bytes
// after binaryID, any other id (an uppercase UUID, a UUID without dashes,
// a FHIR id of other characters) as it is, and both read back as written.
func TestIndexIDForms(t *testing.T) {
	for _, tc := range []struct {
		id     string
		binary bool
	}{
		{"0190f4c2-7b1a-7c3e-9a2b-3c4d5e6f7a8b", true},
		{"00000000-0000-0000-0000-000000000000", true},
		{"ffffffff-ffff-ffff-ffff-ffffffffffff", true},
		{"0190F4C2-7B1A-7C3E-9A2B-3C4D5E6F7A8B", false},
		{"0190f4c27b1a7c3e9a2b3c4d5e6f7a8b", false},
		{"0190f4c2-7b1a-7c3e-9a2b-3c4d5e6f7a8", false},
		{"0190f4c2-7b1a-7c3e-9a2b-3c4d5e6f7a8g", false},
		{"0190f4c2+7b1a-7c3e-9a2b-3c4d5e6f7a8b", false},
		{"example", false},
		{"a.b-c", false},
	} {
		k := appendIndexID([]byte("v\x00"), tc.id)
		if got := k[2] == binaryID; got != tc.binary {
			t.Errorf("%s: kept in 16 bytes %v, want %v", tc.id, got, tc.binary)
		}
		if tc.binary && len(k) != 2+17 {
			t.Errorf("%s: %d bytes", tc.id, len(k)-2)
		}
		if key, id := splitIndexKey(k); key != "v" || id != tc.id {
			t.Errorf("%s: reads back as %q %q", tc.id, key, id)
		}
	}
}

// TestPagingOverMixedIDForms pages one resource at a time through a
// search whose driving index holds, under one value, ids in both forms
// (server-assigned UUIDs and ids a client chose): every match comes once,
// in id order, whichever id the page before ended with.
func TestPagingOverMixedIDForms(t *testing.T) {
	st := newTestStore(t)
	ids := []string{
		"0190f4c2-7b1a-7c3e-9a2b-3c4d5e6f7a8b", "a", "0190f4c2-7b1a-7c3e-9a2b-3c4d5e6f7a8c",
		"zzz", "5", "ffffffff-0000-4000-8000-000000000000", "0190F4C2-7B1A-7C3E-9A2B-3C4D5E6F7A8B",
		"b-1", "00000000-0000-4000-8000-000000000000", "0190f4c2-7b1a-7c3e-9a2b-3c4d5e6f7a8b0",
	}
	err := st.Write(context.Background(), func(tx *Tx) error {
		for i, id := range ids {
			body := fmt.Sprintf(`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:t","code":"x"}]},"subject":{"reference":"Patient/%s"},"valueQuantity":{"value":%d}}`, ids[(i+3)%len(ids)], i)
			if _, err := tx.Put(testDoc(t, "Observation", id, body), PutOptions{}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Sorted(slices.Values(ids))
	for _, query := range []string{"code=urn:t|x", "code=x,urn:t|x", "combo-code=x", "status=final&code=x", "value-quantity=ge0"} {
		vals, _ := url.ParseQuery(query)
		q, err := st.reg.Parse("Observation", vals, search.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		var after *Position
		for range len(ids) + 2 {
			var page []string
			var more bool
			err := st.View(context.Background(), func(tx *Tx) error {
				var err error
				page, after, more, err = tx.SearchPage(q, after, 1, nil)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, page...)
			if !more {
				break
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s paged one by one: %v, want %v", query, got, want)
		}
	}
	// Each id found through a reference to it, in either form.
	for _, id := range ids {
		vals := url.Values{"subject": {"Patient/" + id}}
		q, err := st.reg.Parse("Observation", vals, search.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var found []string
		_ = st.View(context.Background(), func(tx *Tx) error {
			found, err = tx.Search(q)
			return err
		})
		if len(found) != 1 {
			t.Errorf("subject=Patient/%s finds %v", id, found)
		}
	}
}

// newTestStore opens a store on a new database of the backend
// P2P_TEST_DB names.
func newTestStore(t *testing.T) *Store {
	t.Helper()
	db, st := openDSN(t, testDSN(t, "s"))
	t.Cleanup(func() { st.Close(); db.Close() })
	return st
}

// TestUUIDSeek: a run of ids in 16 bytes resumes after any id (a UUID, an
// uppercase one, a client's id, an ingested "src-..." id, one of the
// characters between the digits and the letters) at most one id before
// the first one after it, never after it.
func TestUUIDSeek(t *testing.T) {
	var uuids []string
	for i := range 4000 {
		h := uint64(i+1) * 0x9e3779b97f4a7c15
		uuids = append(uuids, fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", uint32(h>>32), uint16(h>>16), uint16(h), uint16(h>>48), h&0xffffffffffff))
	}
	uuids = append(uuids, "00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff")
	slices.Sort(uuids)
	starts := []string{"0", "9", "a", "f", "g", "z", "A", "F", "Z", ":", "src-abc", "zzz", "-", ".x",
		"7", "7f", "7fffffff", "7fffffff-", "7fffffff-f", "7fffffffx", "7fffffff.a", "7fffffff,a",
		"0190F4C2-7B1A-7C3E-9A2B-3C4D5E6F7A8B", "0190f4c2-7b1a-7c3e-9a2b-3c4d5e6f7a8b0",
		strings.Repeat("p", 64), "ffffffff-ffff-ffff-ffff-ffffffffffff", "ffffffff-ffff-ffff-ffff-fffffffffffg"}
	for _, u := range everyNth(uuids, 50) {
		starts = append(starts, u, u[:20], u[:9]+"Z", strings.ToUpper(u), u+"x")
	}
	for _, start := range starts {
		s := uuidSeek(start)
		seek := uuidString(s[:])
		first, _ := slices.BinarySearch(uuids, seek) // the run's first key read
		i := first
		for i < len(uuids) && uuids[i] <= start {
			i++
		}
		want := sort.SearchStrings(uuids, start+"\x00") // the first after start
		if i != want {
			t.Errorf("after %q: resumes at %d, want %d", start, i, want)
		}
		if i-first > 1 {
			t.Errorf("after %q: reads %d ids not after it", start, i-first)
		}
	}
}

func everyNth(s []string, n int) []string {
	var out []string
	for i := 0; i < len(s); i += n {
		out = append(out, s[i])
	}
	return out
}
