package fhir_test

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir"
)

// pagingObs is one Observation of the paging data set: a date and a
// quantity, each possibly missing.
type pagingObs struct {
	id       string
	day      int // 0 when missing
	value    int // -1 when missing
	hasValue bool
}

// loadPagingObs writes n Observations with code urn:t|many through batch
// Bundles: o00000, o00001, ... with dates and values that repeat (so that
// sorting needs its tie-breaker) and are missing for some.
func loadPagingObs(t *testing.T, ts *testServer, n int) []pagingObs {
	t.Helper()
	var all []pagingObs
	for from := 0; from < n; from += 500 {
		var entries []string
		for i := from; i < min(from+500, n); i++ {
			o := pagingObs{id: fmt.Sprintf("o%05d", i), value: -1}
			res := fmt.Sprintf(`{"resourceType":"Observation","id":%q,"status":"final","code":{"coding":[{"system":"urn:t","code":"many"}]}`, o.id)
			if i%10 != 0 {
				o.day = 1 + (i*7)%28
				res += fmt.Sprintf(`,"effectiveDateTime":"2020-02-%02d"`, o.day)
			}
			if i%11 != 0 {
				o.value, o.hasValue = i%13, true
				res += fmt.Sprintf(`,"valueQuantity":{"value":%d,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"}`, o.value)
			}
			res += "}"
			entries = append(entries, fmt.Sprintf(`{"resource":%s,"request":{"method":"PUT","url":"Observation/%s"}}`, res, o.id))
			all = append(all, o)
		}
		ts.do(http.MethodPost, "", `{"resourceType":"Bundle","type":"batch","entry":[`+strings.Join(entries, ",")+`]}`).want(t, http.StatusOK)
	}
	return all
}

// pageAll follows next links from first and returns the ids served, in
// order, and the bundles.
func pageAll(t *testing.T, ts *testServer, first string, between func(page int)) ([]string, []map[string]any) {
	t.Helper()
	var ids []string
	var pages []map[string]any
	r := ts.do(http.MethodGet, first, nil).want(t, http.StatusOK)
	for {
		pages = append(pages, r.JSON)
		ids = append(ids, bundleIDs(r.JSON)...)
		next := link(r.JSON, "next")
		if next == "" {
			return ids, pages
		}
		if len(pages) > 1000 {
			t.Fatalf("more than 1000 pages")
		}
		if between != nil {
			between(len(pages))
		}
		r = ts.do(http.MethodGet, next, nil).want(t, http.StatusOK)
	}
}

// TestKeysetPagingServesEveryMatchOnce pages through a search with many
// more matches than a kept result set could hold (-search-cache-bytes is
// small here: the ids alone would take more than the whole budget), with
// and without _sort, on one and several keys, ascending and descending:
// every match is served exactly once, in the order _sort asks (resources
// without a value last, ties by id; FHIR R4 search.html#sort), while what
// the server keeps for the search stays the size of its query, not of its
// matches (FHIR R4 search.html#paging).
func TestKeysetPagingServesEveryMatchOnce(t *testing.T) {
	const n = 1500
	const budget = 32 << 10
	ts := newServer(t, func(c *fhir.Config) { c.SearchCacheBytes = budget })
	all := loadPagingObs(t, ts, n)
	if n*32 <= budget {
		t.Fatalf("the ids of %d matches fit the budget: the test proves nothing", n)
	}
	// orderBy sorts by (missing last, value in the direction) per key,
	// then by id.
	type key struct {
		val  func(o pagingObs) (int, bool)
		desc bool
	}
	day := func(o pagingObs) (int, bool) { return o.day, o.day != 0 }
	qty := func(o pagingObs) (int, bool) { return o.value, o.hasValue }
	orderBy := func(keys ...key) []string {
		s := slices.Clone(all)
		slices.SortStableFunc(s, func(a, b pagingObs) int {
			for _, k := range keys {
				av, ah := k.val(a)
				bv, bh := k.val(b)
				switch {
				case ah != bh:
					if ah {
						return -1
					}
					return 1
				case !ah || av == bv:
					continue
				case k.desc:
					return cmp.Compare(bv, av)
				default:
					return cmp.Compare(av, bv)
				}
			}
			return strings.Compare(a.id, b.id)
		})
		out := make([]string, len(s))
		for i, o := range s {
			out[i] = "Observation/" + o.id
		}
		return out
	}
	for _, c := range []struct {
		sort string
		want []string
	}{
		{"", orderBy()},
		{"date", orderBy(key{day, false})},
		{"-date", orderBy(key{day, true})},
		{"-value-quantity,date", orderBy(key{qty, true}, key{day, false})},
		{"date,-value-quantity", orderBy(key{day, false}, key{qty, true})},
	} {
		t.Run("sort="+c.sort, func(t *testing.T) {
			q := "/Observation?code=urn:t|many&_count=100"
			if c.sort != "" {
				q += "&_sort=" + c.sort
			}
			before := ts.fhir.PagingStats()
			got, pages := pageAll(t, ts, q, nil)
			after := ts.fhir.PagingStats()
			if !slices.Equal(got, c.want) {
				i := 0
				for i < min(len(got), len(c.want)) && got[i] == c.want[i] {
					i++
				}
				t.Fatalf("%d served, want %d; first difference at %d: got %v, want %v", len(got), len(c.want), i,
					got[i:min(i+3, len(got))], c.want[i:min(i+3, len(c.want))])
			}
			if len(pages) != n/100 {
				t.Errorf("%d pages, want %d", len(pages), n/100)
			}
			// Nothing kept: the links carry the search's parameters, far
			// less than its ids would take, so any process answers them.
			if after.Kept != before.Kept || after.Bytes != before.Bytes {
				t.Errorf("paging keeps %d sets and %d bytes more, want none", after.Kept-before.Kept, after.Bytes-before.Bytes)
			}
			if next := link(pages[0], "next"); len(next) > 2048 {
				t.Errorf("a next link of %d bytes: %.200s", len(next), next)
			}
			for i, p := range pages {
				if p["total"] != nil {
					t.Errorf("page %d has a total without _total: counting is asked for", i)
				}
				if link(p, "first") == "" {
					t.Errorf("page %d has no first link", i)
				}
			}
		})
	}

	// _total=accurate counts every match on every page; a result that
	// fits one page has its total for free.
	r := ts.do(http.MethodGet, "/Observation?code=urn:t|many&_total=accurate&_count=700", nil).want(t, http.StatusOK)
	if r.JSON["total"] != json.Number(fmt.Sprint(n)) {
		t.Errorf("_total=accurate: %v", r.JSON["total"])
	}
	r = ts.do(http.MethodGet, link(r.JSON, "next"), nil).want(t, http.StatusOK)
	if r.JSON["total"] != json.Number(fmt.Sprint(n)) || len(bundleIDs(r.JSON)) != 700 {
		t.Errorf("_total=accurate, page 2: %v with %d", r.JSON["total"], len(bundleIDs(r.JSON)))
	}
	r = ts.do(http.MethodGet, "/Observation?_id=o00001,o00002", nil).want(t, http.StatusOK)
	if r.JSON["total"] != json.Number("2") || link(r.JSON, "next") != "" {
		t.Errorf("one page: total %v", r.JSON["total"])
	}
	if r := ts.do(http.MethodGet, "/Observation?code=urn:t|many&_summary=count", nil).want(t, http.StatusOK); r.JSON["total"] != json.Number(fmt.Sprint(n)) {
		t.Errorf("_summary=count: %v", r.JSON["total"])
	}
	// A cursor whose position is not one of ours is refused, not served.
	ts.do(http.MethodGet, "/Observation?_cursor=0123456789abcdef01234567.o1!2x", nil).want(t, http.StatusBadRequest).outcome(t)
}

// TestEverythingTypeLevelPagesLazily pages type-level Patient/$everything
// over more data than a kept result set could hold (the old refusal was a
// quarter of -search-cache-bytes): every resource comes exactly once,
// patient by patient, records split across pages where the page ends;
// what the server keeps is the request, not the result; a resource
// written between pages into a record not yet served is served; and the
// cursor works only with the rights it was made with.
func TestEverythingTypeLevelPagesLazily(t *testing.T) {
	const patients = 150
	const budget = 16 << 10
	ts := newServer(t, func(c *fhir.Config) { c.SearchCacheBytes = budget })
	ts.fhir.EnableEverything(fhir.EverythingOptions{})
	withTestAccess(ts.fhir)
	var entries, want []string
	for i := range patients {
		p := fmt.Sprintf("p%03d", i)
		entries = append(entries, fmt.Sprintf(`{"resource":{"resourceType":"Patient","id":%q},"request":{"method":"PUT","url":"Patient/%s"}}`, p, p))
		want = append(want, "Patient/"+p)
		for _, o := range []string{"a", "b"} {
			id := p + "-" + o
			entries = append(entries, fmt.Sprintf(`{"resource":{"resourceType":"Observation","id":%q,"status":"final","code":{"text":"x"},"subject":{"reference":"Patient/%s"}},"request":{"method":"PUT","url":"Observation/%s"}}`, id, p, id))
			want = append(want, "Observation/"+id)
		}
	}
	ts.do(http.MethodPost, "", `{"resourceType":"Bundle","type":"batch","entry":[`+strings.Join(entries, ",")+`]}`).want(t, http.StatusOK)
	if len(want)*40 <= budget/4 {
		t.Fatalf("the result set fits the old limit: the test proves nothing")
	}
	// Written between pages into the last record, not yet served.
	late := `{"resourceType":"Observation","id":"p149-c","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p149"}}`
	want = append(want, "Observation/p149-c")

	before := ts.fhir.PagingStats()
	var got []string
	r := ts.do(http.MethodGet, "/Patient/$everything?_count=7", nil).want(t, http.StatusOK)
	var second string
	for pages := 1; ; pages++ {
		got = append(got, bundleIDs(r.JSON)...)
		if n := len(bundleIDs(r.JSON)); n > 7 {
			t.Fatalf("page %d has %d entries", pages, n)
		}
		next := link(r.JSON, "next")
		if next == "" {
			break
		}
		if pages == 1 {
			second = next
			after := ts.fhir.PagingStats()
			if after.Kept != before.Kept || after.Bytes != before.Bytes || len(next) > 2048 {
				t.Errorf("keeps %d more and %d bytes more, want none; the next link has %d bytes", after.Kept-before.Kept, after.Bytes-before.Bytes, len(next))
			}
		}
		if pages == 3 {
			ts.do(http.MethodPut, "/Observation/p149-c", late).want(t, http.StatusCreated)
		}
		r = ts.do(http.MethodGet, next, nil).want(t, http.StatusOK)
	}
	if !slices.Equal(got, want) {
		i := 0
		for i < min(len(got), len(want)) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%d served, want %d; first difference at %d", len(got), len(want), i)
	}
	// Other rights: refused, whatever the position says.
	ts.http.Config.Handler.(interface {
		Mount(string, http.Handler)
	}).Mount("/member", ts.fhir.Handler())
	other := strings.Replace(second, ts.URL, ts.http.URL+"/member", 1)
	ts.do(http.MethodGet, other, nil, "X-Test-Read", "Patient,Observation").want(t, http.StatusForbidden).outcome(t)
	// The first link starts again from the first patient.
	if r := ts.do(http.MethodGet, link(r.JSON, "first"), nil).want(t, http.StatusOK); !slices.Equal(bundleIDs(r.JSON), want[:7]) {
		t.Errorf("first page again: %v", bundleIDs(r.JSON))
	}
	ts.do(http.MethodGet, strings.Replace(second, "_cursor=", "_cursor=00", 1), nil).want(t, http.StatusGone).outcome(t)
	ts.do(http.MethodGet, "/Patient/$everything?_cursor=0123456789abcdef01234567.p001", nil).want(t, http.StatusBadRequest).outcome(t)
}

// TestSortedPagingUnderWrites: with _sort, each page starts after the
// sort values and id of the last resource served, so what is written
// between pages is seen by where it sorts now, as the README says: a new
// resource sorting after the position is served, one sorting before it is
// not, and one not yet served that is changed to sort before the position
// is not served; nothing is served twice.
func TestSortedPagingUnderWrites(t *testing.T) {
	ts := newServer(t)
	obs := func(id string, day int) string {
		return fmt.Sprintf(`{"resourceType":"Observation","id":%q,"status":"final","code":{"coding":[{"system":"urn:t","code":"sorted"}]},"effectiveDateTime":"2021-03-%02d"}`, id, day)
	}
	for day := 1; day <= 30; day++ {
		id := fmt.Sprintf("s%02d", day)
		ts.do(http.MethodPut, "/Observation/"+id, obs(id, day)).want(t, http.StatusCreated)
	}
	got, _ := pageAll(t, ts, "/Observation?code=urn:t|sorted&_sort=-date&_count=10", func(page int) {
		if page != 1 { // served so far: days 30 down to 21
			return
		}
		ts.do(http.MethodPut, "/Observation/late", obs("late", 5)).want(t, http.StatusCreated)    // after the position
		ts.do(http.MethodPut, "/Observation/early", obs("early", 25)).want(t, http.StatusCreated) // before it
		ts.do(http.MethodPut, "/Observation/s15", obs("s15", 28)).want(t, http.StatusOK)          // moved before it
	})
	var want []string
	for day := 30; day >= 1; day-- {
		if day == 5 {
			// "late" shares s05's date; ties go by id.
			want = append(want, "Observation/late")
		}
		if day != 15 {
			want = append(want, fmt.Sprintf("Observation/s%02d", day))
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("served %v\nwant   %v", got, want)
	}
}
