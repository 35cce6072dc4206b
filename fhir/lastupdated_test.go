package fhir_test

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestLastUpdatedComparesToTheMicrosecond: meta.lastUpdated is stamped to
// the microsecond while the date index keeps milliseconds. FHIR R4
// search.html#date: a search value's precision is the range it denotes
// (an instant with 6 fractional digits is one microsecond, with 4 a
// tenth of a millisecond), a resource's lastUpdated is an instant at its
// own precision, and eq/ne/gt/lt/ge/le/sa/eb compare the two ranges. So
// _lastUpdated=gt<a resource's lastUpdated> finds every resource stamped
// after it, also within the same millisecond (how a client syncs), and
// eq<a stamp> only those stamped at that microsecond. Resources are
// written at chosen instants (the store's clock), several within one
// millisecond; each search is answered through every path of the store:
// a page (the index range, or a driving clause with the date clause
// checked per candidate), a count, and a conditional create
// (If-None-Exist, FHIR R4 http.html#ccreate), which finds the resources
// a condition matches another way. _sort=_lastUpdated follows the exact
// stamps.
func TestLastUpdatedComparesToTheMicrosecond(t *testing.T) {
	ts := newServer(t)
	var at atomic.Pointer[time.Time]
	ts.st.SetClock(func() time.Time { return *at.Load() })
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	stamps := []struct {
		id string
		us int // microseconds after base
	}{
		// In the millisecond of m, b, b2 and c, id order is not stamp
		// order, so that _sort shows which one it follows.
		{"f", 122900}, // the millisecond before
		{"m", 123100},
		{"b", 123400},
		{"b2", 123400}, // stamped at the same microsecond as b
		{"c", 123700},
		{"e", 124200}, // the millisecond after
	}
	stamp := map[string]string{}
	for _, s := range stamps {
		tm := base.Add(time.Duration(s.us) * time.Microsecond)
		at.Store(&tm)
		r := ts.do(http.MethodPut, "/Basic/"+s.id, `{"resourceType":"Basic","id":"`+s.id+`","code":{"coding":[{"system":"urn:lu","code":"lu"}]}}`).want(t, http.StatusCreated)
		meta, _ := r.JSON["meta"].(map[string]any)
		got, _ := meta["lastUpdated"].(string)
		if want := tm.Format("2006-01-02T15:04:05.000000Z07:00"); got != want {
			t.Fatalf("Basic/%s: meta.lastUpdated %q, want %q (the store's clock)", s.id, got, want)
		}
		stamp[s.id] = got
	}
	t.Logf("stamps: %v", stamp)
	b := stamp["b"] // 2026-01-02T03:04:05.123400Z
	rows := []struct {
		query string // the value(s) of _lastUpdated, & more
		want  []string
	}{
		// One microsecond: b's own stamp.
		{"eq" + b, []string{"b", "b2"}},
		{b, []string{"b", "b2"}},
		{"ne" + b, []string{"m", "c", "e", "f"}},
		{"gt" + b, []string{"c", "e"}},
		{"ge" + b, []string{"b", "b2", "c", "e"}},
		{"lt" + b, []string{"m", "f"}},
		{"le" + b, []string{"m", "b", "b2", "f"}},
		{"sa" + b, []string{"c", "e"}},
		{"eb" + b, []string{"m", "f"}},
		{"gt" + stamp["m"], []string{"b", "b2", "c", "e"}},
		{"lt" + stamp["c"], []string{"m", "b", "b2", "f"}},
		{"ge" + stamp["c"], []string{"c", "e"}},
		{"le" + stamp["m"], []string{"m", "f"}},
		{"eq" + stamp["m"], []string{"m"}},
		{"eq" + stamp["c"], []string{"c"}},
		// A tenth of a millisecond: .1234 is .123400 to .123499.
		{"eq2026-01-02T03:04:05.1234Z", []string{"b", "b2"}},
		{"gt2026-01-02T03:04:05.1234Z", []string{"c", "e"}},
		{"lt2026-01-02T03:04:05.1234Z", []string{"m", "f"}},
		{"sa2026-01-02T03:04:05.1231Z", []string{"b", "b2", "c", "e"}},
		{"eb2026-01-02T03:04:05.1236Z", []string{"m", "b", "b2", "f"}},
		// Nanoseconds and another zone: the same microsecond.
		{"2026-01-02T03:04:05.123400000Z", []string{"b", "b2"}},
		{"2026-01-02T04:04:05.123400+01:00", []string{"b", "b2"}},
		{"2026-01-02T03:04:05.123401Z", nil},
		// A millisecond (the index's own precision) and coarser.
		{"2026-01-02T03:04:05.123Z", []string{"m", "b", "b2", "c"}},
		{"gt2026-01-02T03:04:05.123Z", []string{"e"}},
		{"lt2026-01-02T03:04:05.123Z", []string{"f"}},
		{"ne2026-01-02T03:04:05.123Z", []string{"e", "f"}},
		{"2026-01-02T03:04:05Z", []string{"m", "b", "b2", "c", "e", "f"}},
		// OR lists and AND repeats, and another clause driving.
		{"eq" + stamp["m"] + ",eq" + stamp["c"], []string{"m", "c"}},
		{"gt" + stamp["m"] + "&_lastUpdated=lt" + stamp["c"], []string{"b", "b2"}},
		{"gt" + b + "&code=urn:lu|lu", []string{"c", "e"}},
		{"eq" + b + "&code=urn:lu|lu", []string{"b", "b2"}},
		{"lt" + b + "&_id=m,b,c,f", []string{"m", "f"}},
	}
	for _, row := range rows {
		q := "_lastUpdated=" + strings.ReplaceAll(url.QueryEscape(row.query), "%26_lastUpdated%3D", "&_lastUpdated=")
		q = strings.Replace(q, "%26code%3D", "&code=", 1)
		q = strings.Replace(q, "%26_id%3D", "&_id=", 1)
		r := ts.do(http.MethodGet, "/Basic?_count=100&"+q, nil)
		if r.Status != http.StatusOK {
			t.Errorf("%s: %d %s", row.query, r.Status, r.Body)
			continue
		}
		got := bundleIDs(r.JSON)
		for i := range got {
			got[i] = strings.TrimPrefix(got[i], "Basic/")
		}
		slices.Sort(got)
		slices.Sort(row.want)
		if !slices.Equal(got, row.want) {
			t.Errorf("_lastUpdated=%s: %v, want %v", row.query, got, row.want)
		}
		r = ts.do(http.MethodGet, "/Basic?_summary=count&"+q, nil)
		if total, _ := r.JSON["total"].(interface{ String() string }); total == nil || total.String() != strconv.Itoa(len(row.want)) {
			t.Errorf("_lastUpdated=%s&_summary=count: total %v, want %d", row.query, r.JSON["total"], len(row.want))
		}
		// If-None-Exist: one match answers it (200), none creates (201),
		// several are refused (412).
		r = ts.do(http.MethodPost, "/Basic", `{"resourceType":"Basic","code":{"text":"probe"}}`, "If-None-Exist", q)
		switch len(row.want) {
		case 0:
			if r.Status != http.StatusCreated {
				t.Errorf("If-None-Exist %s: %d, want 201 (no match)", row.query, r.Status)
			} else {
				id, _ := r.JSON["id"].(string)
				ts.do(http.MethodDelete, "/Basic/"+id, nil).want(t, http.StatusOK)
			}
		case 1:
			if id, _ := r.JSON["id"].(string); r.Status != http.StatusOK || id != row.want[0] {
				t.Errorf("If-None-Exist %s: %d %v, want 200 with Basic/%s", row.query, r.Status, r.JSON["id"], row.want[0])
			}
		default:
			if r.Status != http.StatusPreconditionFailed {
				t.Errorf("If-None-Exist %s: %d, want 412 (%d matches)", row.query, r.Status, len(row.want))
			}
		}
	}
	for _, sort := range []struct {
		param string
		want  []string
	}{
		{"_lastUpdated", []string{"f", "m", "b", "b2", "c", "e"}},
		{"-_lastUpdated", []string{"e", "c", "b", "b2", "m", "f"}},
	} {
		var got []string
		next := "/Basic?code=urn:lu|lu&_count=2&_sort=" + sort.param
		for next != "" && len(got) < 20 {
			r := ts.do(http.MethodGet, next, nil).want(t, http.StatusOK)
			for _, id := range bundleIDs(r.JSON) {
				got = append(got, strings.TrimPrefix(id, "Basic/"))
			}
			next = link(r.JSON, "next")
		}
		if !slices.Equal(got, sort.want) {
			t.Errorf("_sort=%s (pages of 2): %v, want %v", sort.param, got, sort.want)
		}
	}
}
