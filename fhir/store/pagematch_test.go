package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestPagesServeExactlyTheMatches checks the rule SearchPage and
// SearchCount follow when a clause of exact keys drives them: they read
// the ids of that clause's index entries, filtered by key and payload as
// its ranges say, and, for a parameter with its own index, check neither
// the resource's record nor that clause again. The pages must still hold
// exactly what Search finds from the indexes: no deleted resource, none
// whose update took the value away, a long value only for itself and not
// for a short value made to have its key (or the reverse), each other
// clause checked, parameters found through others' indexes checked; in a
// read and in a write transaction whose own puts and deletes are not yet
// in the indexes (FHIR R4 search.html: a search matches the current
// versions of the resources).
func TestPagesServeExactlyTheMatches(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.db")
	if os.Getenv("P2P_TEST_DB") == "postgres" {
		path = pgtest.Database(t)
	}
	db, err := OpenDB(context.Background(), path, DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := Open(db, testReg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(); db.Close() })
	long := strings.Repeat("x", 600)
	long1, long2 := long+"1", long+"2"
	// A short value made to be long1's key (its first 447 bytes, 0x01,
	// the first 16 bytes of its SHA-256 in hexadecimal: see
	// search.valueEntry): only its index entry's empty payload tells it
	// from long1.
	sum := sha256.Sum256([]byte(long1))
	crafted := long1[:447] + "\x01" + hex.EncodeToString(sum[:16])
	code := func(i int) string {
		switch i % 9 {
		case 6:
			if i%2 == 0 {
				return crafted
			}
		case 7:
			return long1
		case 8:
			return long2
		}
		return fmt.Sprintf("c%d", i%4)
	}
	obs := func(id, code, status string, n int) *Doc {
		return testDoc(t, "Observation", id, fmt.Sprintf(`{"resourceType":"Observation","id":%q,"status":%q,"code":{"coding":[{"system":"urn:t","code":%q}]},"component":[{"code":{"coding":[{"system":"urn:k","code":"c%d"}]}}],"effectiveDateTime":"2024-01-%02d"}`,
			id, status, strings.ReplaceAll(code, "\x01", `\u0001`), n%3, 1+n%28))
	}
	id := func(i int) string {
		if i%2 == 0 {
			return fmt.Sprintf("0190f4c2-7b1a-7c3e-9a2b-%012x", i)
		}
		return fmt.Sprintf("o%03d", i)
	}
	err = st.Write(context.Background(), func(tx *Tx) error {
		for i := range 120 {
			if _, err := tx.Put(obs(id(i), code(i), []string{"final", "amended"}[i%2], i), PutOptions{}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Deleted, and updated to another code, in a later transaction.
	err = st.Write(context.Background(), func(tx *Tx) error {
		for i := 0; i < 120; i += 5 {
			if _, err := tx.Delete("Observation", id(i), 0); err != nil {
				return err
			}
		}
		for i := 3; i < 120; i += 7 {
			if i%5 == 0 {
				continue
			}
			if _, err := tx.Put(obs(id(i), "c9", "final", i), PutOptions{}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	queries := []string{
		"code=c0", "code=urn:t|c1", "code=c0,c2", "code=c9", "code=c2&status=final",
		"code=c1&status=amended&date=ge2024-01-10", "code=" + long1, "code=urn:t|" + long2,
		"code=" + long + "3", "code=" + url.QueryEscape(crafted), "code=urn:t|" + url.QueryEscape(crafted) + "," + long1, "code=c3&_sort=-date", "code=c0&code=c0,c1", "code=c1&combo-code=c1",
		"combo-code=c2", "combo-code=urn:k|c1&code=c3", "code:not=c0&status=final", "code:not=c0", "code:not=c1&_sort=date", "code=c3&_id=" + id(3) + "," + id(11),
	}
	check := func(tx *Tx, when string, touched []string) {
		t.Helper()
		hits := 0
		for _, qs := range queries {
			vals, err := url.ParseQuery(qs)
			if err != nil {
				t.Fatal(err)
			}
			q, err := testReg.Parse("Observation", vals, search.Options{Base: "http://example.org/fhir"})
			if err != nil {
				t.Fatalf("%s: %v", qs, err)
			}
			want, err := tx.Search(q)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			var after *Position
			for {
				page, last, more, err := tx.SearchPage(q, after, 7, nil)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, page...)
				if !more {
					break
				}
				after = last
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s: %s paged by 7 %v, Search %v", when, qs, got, want)
			}
			if n, err := tx.SearchCount(q, nil); err != nil || n != len(want) {
				t.Errorf("%s: %s counted %d (%v), Search %d", when, qs, n, err, len(want))
			}
			for _, id := range got {
				if ok, err := tx.Match(q, id); err != nil || !ok {
					t.Errorf("%s: %s served %s, which does not match", when, qs, id)
				}
				if v, err := tx.Read("Observation", id); err != nil || v.Deleted {
					t.Errorf("%s: %s served %s, which is deleted", when, qs, id)
				}
			}
			for _, id := range touched {
				if slices.Contains(got, id) != slices.Contains(want, id) {
					t.Errorf("%s: %s: %s served %v", when, qs, id, slices.Contains(got, id))
				}
			}
			if len(want) > 0 {
				hits++
			}
		}
		if hits < len(queries)-2 {
			t.Errorf("%s: only %d of %d queries have hits", when, hits, len(queries))
		}
	}
	if err := st.View(context.Background(), func(tx *Tx) error { check(tx, "read", nil); return nil }); err != nil {
		t.Fatal(err)
	}
	// In a write, after its own changes: a delete of one that matched
	// c0, an update from c1 to c0, a create of c0.
	err = st.Write(context.Background(), func(tx *Tx) error {
		if _, err := tx.Delete("Observation", id(4), 0); err != nil {
			return err
		}
		if _, err := tx.Put(obs(id(1), "c0", "final", 1), PutOptions{}); err != nil {
			return err
		}
		if _, err := tx.Put(obs("new", "c0", "final", 2), PutOptions{}); err != nil {
			return err
		}
		check(tx, "write", []string{id(4), id(1), "new"})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
