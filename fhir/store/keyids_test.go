package store

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/search"
)

// TestKeyIDsOverBothIDForms: the ids under the exact keys of a search's
// driving index come once each, in id order, after any start, whether
// under a key the ids kept in 16 bytes (server-assigned lowercase UUIDs)
// are few, many (more than a first read of a cursor brings), or absent,
// the other ids too (the two runs are sought together, each key's), and
// whether the other ids (a client's, an ingested "<16hex>.<source
// id>") sort before, among or after the UUIDs. FHIR R4 search.html#count
// lets the server page as it chooses; each page must go on where the one
// before ended.
func TestKeyIDsOverBothIDForms(t *testing.T) {
	st := newTestStore(t)
	uuid := func(i int) string {
		h := uint64(i+1) * 0x9e3779b97f4a7c15
		return fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", uint32(h>>32), uint16(h>>16), uint16(h), uint16(h>>48), h&0xffffffffffff)
	}
	texts := func(tag string) []string {
		return []string{
			"0-" + tag, "00000000-0000-0000-0000-00000000000" + tag, // before every UUID
			"7" + tag, "7fffffff-" + tag, strings.ToUpper(uuid(3)) + tag, // among them
			"0190f4c27b1a7c3e." + tag + "src", "b" + tag, "zzz" + tag, // an ingested id, after them
		}
	}
	under := map[string][]string{} // code: its resources' ids
	n := 0
	add := func(code string, ids ...string) { under[code] = append(under[code], ids...) }
	for range 3 {
		add("few", uuid(n))
		n++
	}
	add("few", texts("f")...)
	for range 150 {
		add("many", uuid(n))
		n++
	}
	add("many", texts("m")...)
	add("text", texts("t")...)
	for range 5 {
		add("uuids", uuid(n))
		n++
	}
	// An id under two keys: a search of both finds it once.
	add("both", uuid(0), "0-f")
	err := st.Write(context.Background(), func(tx *Tx) error {
		byID := map[string][]string{}
		for code, ids := range under {
			for _, id := range ids {
				byID[id] = append(byID[id], code)
			}
		}
		for id, codes := range byID {
			var cs []string
			for _, c := range codes {
				cs = append(cs, fmt.Sprintf(`{"system":"urn:k","code":%q}`, c))
			}
			body := fmt.Sprintf(`{"resourceType":"Observation","status":"final","code":{"coding":[%s]}}`, strings.Join(cs, ","))
			if _, err := tx.Put(testDoc(t, "Observation", id, body), PutOptions{}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, codes := range []string{"few", "many", "text", "uuids", "few,many", "few,text,uuids", "both,few", "many,both", "none", "none,few"} {
		var want []string
		for _, c := range strings.Split(codes, ",") {
			want = append(want, under[c]...)
		}
		slices.Sort(want)
		want = slices.Compact(want)
		q, err := st.reg.Parse("Observation", url.Values{"code": {codes}}, search.Options{})
		if err != nil {
			t.Fatal(err)
		}
		starts := append([]string{"", "0", "00000000-", "7", "7g", "8", "Z", "c", "~", uuid(1000), strings.ToUpper(uuid(3)), "0190f4c27b1a7c3e"}, want...)
		err = st.View(context.Background(), func(tx *Tx) error {
			// As for a page: on PostgreSQL the index reads join records.
			m, err := tx.newMatcher(q, &pageRead{first: 5})
			if err != nil {
				return err
			}
			if m == nil || m.keys == nil {
				t.Fatalf("code=%s: not driven by its exact keys", codes)
			}
			for _, start := range starts {
				var got []string
				m.keyIDs(start, func(id string) bool {
					got = append(got, id)
					return true
				})
				i, _ := slices.BinarySearch(want, start+"\x00")
				if !slices.Equal(got, want[i:]) {
					t.Errorf("code=%s after %q: %v, want %v", codes, start, got, want[i:])
				}
				// The first ids alone, as a page of three reads them.
				var head []string
				m.keyIDs(start, func(id string) bool {
					head = append(head, id)
					return len(head) < 3
				})
				if w := want[i:min(i+3, len(want))]; !slices.Equal(head, w) {
					t.Errorf("code=%s after %q, 3 ids: %v, want %v", codes, start, head, w)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		// And through SearchPage, three at a time.
		var got []string
		var after *Position
		for range len(want) + 2 {
			var page []string
			var more bool
			err := st.View(context.Background(), func(tx *Tx) error {
				var err error
				page, after, more, err = tx.SearchPage(q, after, 3, nil)
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
			t.Errorf("code=%s paged by three: %v, want %v", codes, got, want)
		}
	}
}
