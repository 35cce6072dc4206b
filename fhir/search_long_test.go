package fhir_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// TestSearchLongValues: no stored value may become unfindable because it is
// longer than an index key may be, and :exact (and every exact form of
// token, reference and uri search) never matches a mere prefix (FHIR R4
// search.html#string: ":exact ... the search parameter value ... matches
// the entire field"; #token, #reference, #uri match whole values). The
// values run past the 480 bytes an index key holds: a 610-character
// family, a 604-character identifier value, and a twin of each sharing the
// first 600 characters.
func TestSearchLongValues(t *testing.T) {
	fam := strings.Repeat("Longfamily", 60) + "Schlusswrt"  // 610
	twin := strings.Repeat("Longfamily", 60) + "Zwillingxx" // 610, same first 600
	cjk := "a" + strings.Repeat("名", 204)                   // 613 bytes: the key cut falls inside a rune
	idv := strings.Repeat("0123456789", 60) + "ABCD"        // 604
	idTwin := strings.Repeat("0123456789", 60) + "WXYZ"
	code := strings.Repeat("c", 550)
	text := strings.Repeat("Very long display text ", 26) // 598
	ref := "http://elsewhere.example/fhir/" + strings.Repeat("segment/", 60) + "Patient/1"
	vs := "http://example.org/fhir/ValueSet/" + strings.Repeat("v", 580)

	fixtures := []map[string]any{
		{"resourceType": "Patient", "id": "long", "name": []any{map[string]any{"family": fam}},
			"identifier": []any{map[string]any{"system": "urn:long", "value": idv}}},
		{"resourceType": "Patient", "id": "twin", "name": []any{map[string]any{"family": twin}},
			"identifier": []any{map[string]any{"system": "urn:long", "value": idTwin}}},
		{"resourceType": "Patient", "id": "cjk", "name": []any{map[string]any{"family": cjk}}},
		{"resourceType": "Observation", "id": "obs", "status": "final",
			"code":    map[string]any{"coding": []any{map[string]any{"system": "urn:codes", "code": code}}, "text": text},
			"subject": map[string]any{"reference": ref}},
		{"resourceType": "ValueSet", "id": "vs", "status": "active", "url": vs},
	}
	ts := newServer(t)
	for _, f := range fixtures {
		ts.do(http.MethodPut, "/"+f["resourceType"].(string)+"/"+f["id"].(string), f).want(t, http.StatusCreated)
	}
	sum := sha256.Sum256([]byte(strings.ToLower(fam)))
	digest := hex.EncodeToString(sum[:])

	cases := []struct {
		typ    string
		params url.Values
		want   []string
	}{
		// string, default (starts with, case- and accent-insensitive)
		{"Patient", url.Values{"family": {fam}}, []string{"long"}},
		{"Patient", url.Values{"family": {strings.ToUpper(fam)}}, []string{"long"}},
		{"Patient", url.Values{"family": {fam[:480]}}, []string{"long", "twin"}},
		{"Patient", url.Values{"family": {fam[:600]}}, []string{"long", "twin"}},
		{"Patient", url.Values{"family": {fam[:605]}}, []string{"long"}},
		{"Patient", url.Values{"family": {twin[:605]}}, []string{"twin"}},
		{"Patient", url.Values{"family": {fam + "x"}}, nil},
		{"Patient", url.Values{"name": {fam}}, []string{"long"}},
		{"Patient", url.Values{"family": {cjk}}, []string{"cjk"}},
		{"Patient", url.Values{"family": {cjk[:445]}}, []string{"cjk"}}, // the key's cut
		{"Patient", url.Values{"family": {cjk[:448]}}, []string{"cjk"}}, // one rune past it
		// string :exact: the whole value, as written
		{"Patient", url.Values{"family:exact": {fam}}, []string{"long"}},
		{"Patient", url.Values{"family:exact": {twin}}, []string{"twin"}},
		{"Patient", url.Values{"family:exact": {fam[:480]}}, nil},
		{"Patient", url.Values{"family:exact": {fam[:447]}}, nil},
		{"Patient", url.Values{"family:exact": {fam[:609]}}, nil},
		{"Patient", url.Values{"family:exact": {strings.ToLower(fam)}}, nil},
		{"Patient", url.Values{"family:exact": {cjk}}, []string{"cjk"}},
		{"Patient", url.Values{"family:exact": {cjk[:448]}}, nil},
		{"Patient", url.Values{"name:exact": {fam}}, []string{"long"}},
		// string :contains, past the key's cut, never in the digest
		{"Patient", url.Values{"family:contains": {"schlusswrt"}}, []string{"long"}},
		{"Patient", url.Values{"family:contains": {"ZWILLING"}}, []string{"twin"}},
		{"Patient", url.Values{"family:contains": {"gfamilylongf"}}, []string{"long", "twin"}},
		{"Patient", url.Values{"family:contains": {digest[:10]}}, nil},
		{"Patient", url.Values{"family:missing": {"false"}, "_id": {"long,twin"}}, []string{"long", "twin"}},
		// token: system|value, value, system|, |value, :not
		{"Patient", url.Values{"identifier": {"urn:long|" + idv}}, []string{"long"}},
		{"Patient", url.Values{"identifier": {idv}}, []string{"long"}},
		{"Patient", url.Values{"identifier": {"urn:long|" + idTwin}}, []string{"twin"}},
		{"Patient", url.Values{"identifier": {idTwin}}, []string{"twin"}},
		{"Patient", url.Values{"identifier": {"urn:long|" + idv[:480]}}, nil},
		{"Patient", url.Values{"identifier": {idv[:480]}}, nil},
		{"Patient", url.Values{"identifier": {idv[:600]}}, nil},
		{"Patient", url.Values{"identifier": {"urn:long|"}}, []string{"long", "twin"}},
		{"Patient", url.Values{"identifier": {"|" + idv}}, nil},
		{"Patient", url.Values{"identifier": {"urn:other|" + idv}}, nil},
		{"Patient", url.Values{"identifier": {"urn:long|"}, "identifier:not": {"urn:long|" + idv}}, []string{"twin"}},
		{"Patient", url.Values{"identifier": {"urn:long|"}, "identifier:not": {"urn:long|" + idv[:480]}}, []string{"long", "twin"}},
		{"Observation", url.Values{"code": {code}}, []string{"obs"}},
		{"Observation", url.Values{"code": {"urn:codes|" + code}}, []string{"obs"}},
		{"Observation", url.Values{"code": {code[:480]}}, nil},
		{"Observation", url.Values{"code": {"urn:codes|" + code[:500]}}, nil},
		// token :text: starts with, on the normalized text
		{"Observation", url.Values{"code:text": {text}}, []string{"obs"}},
		{"Observation", url.Values{"code:text": {text[:500]}}, []string{"obs"}},
		{"Observation", url.Values{"code:text": {text + "more"}}, nil},
		// reference: the whole reference
		{"Observation", url.Values{"subject": {ref}}, []string{"obs"}},
		{"Observation", url.Values{"subject": {ref[:480]}}, nil},
		{"Observation", url.Values{"subject": {strings.TrimSuffix(ref, "/1")}}, nil},
		// uri: exact, :below, :above
		{"ValueSet", url.Values{"url": {vs}}, []string{"vs"}},
		{"ValueSet", url.Values{"url": {vs[:480]}}, nil},
		{"ValueSet", url.Values{"url": {vs + "v"}}, nil},
		{"ValueSet", url.Values{"url:below": {vs[:300]}}, []string{"vs"}},
		{"ValueSet", url.Values{"url:below": {vs[:500]}}, []string{"vs"}},
		{"ValueSet", url.Values{"url:below": {vs}}, []string{"vs"}},
		{"ValueSet", url.Values{"url:below": {vs + "/x"}}, nil},
		{"ValueSet", url.Values{"url:above": {vs + "/child"}}, []string{"vs"}},
		{"ValueSet", url.Values{"url:above": {vs}}, []string{"vs"}},
		{"ValueSet", url.Values{"url:above": {vs[:500]}}, nil},
	}
	for _, c := range cases {
		var parts []string
		for k, vs := range c.params {
			v := vs[0]
			if r := []rune(v); len(r) > 40 {
				v = fmt.Sprintf("%s…%s(%d bytes)", string(r[:12]), string(r[len(r)-6:]), len(v))
			}
			parts = append(parts, k+"="+v)
		}
		slices.Sort(parts)
		name := c.typ + "?" + strings.Join(parts, "&")
		t.Run(name, func(t *testing.T) {
			for _, how := range []string{"GET", "POST _search"} {
				var r *result
				if how == "GET" {
					r = ts.do(http.MethodGet, "/"+c.typ+"?"+c.params.Encode(), nil).want(t, http.StatusOK)
				} else {
					r = postSearch(t, ts, c.typ, c.params)
				}
				got := bundleIDs(r.JSON)
				for i := range got {
					got[i] = got[i][strings.IndexByte(got[i], '/')+1:]
				}
				slices.Sort(got)
				if !slices.Equal(got, c.want) {
					t.Errorf("%s: got %v, want %v", how, got, c.want)
				}
			}
		})
	}

	// Conditional interactions find long values too.
	body := `{"resourceType":"Patient","identifier":[{"system":"urn:long","value":"` + idv + `"}]}`
	r := ts.do(http.MethodPost, "/Patient", body, "If-None-Exist", "identifier=urn:long|"+url.QueryEscape(idv)).want(t, http.StatusOK)
	if r.JSON["id"] != "long" {
		t.Errorf("If-None-Exist by a long identifier found %v", r.JSON["id"])
	}
	ts.do(http.MethodPost, "/Patient", body, "If-None-Exist", "identifier=urn:long|"+url.QueryEscape(idv[:480])).want(t, http.StatusCreated)
}

// postSearch runs a search as POST [type]/_search with form parameters.
func postSearch(t *testing.T, ts *testServer, typ string, params url.Values) *result {
	t.Helper()
	resp, err := http.Post(ts.URL+"/"+typ+"/_search", "application/x-www-form-urlencoded", strings.NewReader(params.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := &result{Status: resp.StatusCode, Header: resp.Header}
	dec := json.NewDecoder(resp.Body)
	dec.UseNumber()
	if err := dec.Decode(&out.JSON); err != nil {
		t.Fatal(err)
	}
	if out.Status != http.StatusOK {
		t.Fatalf("POST %s/_search: %d %v", typ, out.Status, out.JSON)
	}
	return out
}

// TestSortLongValues: _sort orders by the element's whole value (FHIR R4
// search.html#sort), also when the value is longer than an index key
// holds: values that share their first 500 characters are ordered by what
// follows, not by the digest of their clipped key, and a long value sorts
// against a short one by its text, not by the key's separator.
func TestSortLongValues(t *testing.T) {
	q := strings.Repeat("Q", 500)
	short := strings.Repeat("Q", 460) + "A" // 461 bytes: a key of its own
	fixtures := []struct{ id, family, ident string }{
		{"c", q + "C", q + "C"},
		{"a", q + "A", q + "A"},
		{"s", short, short},
		{"b", q + "B", q + "B"},
	}
	ts := newServer(t)
	for _, f := range fixtures {
		ts.do(http.MethodPut, "/Patient/"+f.id, map[string]any{"resourceType": "Patient", "id": f.id,
			"name":       []any{map[string]any{"family": f.family}},
			"identifier": []any{map[string]any{"system": "urn:sort", "value": f.ident}},
		}).want(t, http.StatusCreated)
	}
	for _, c := range []struct {
		sort string
		want []string
	}{
		{"family", []string{"s", "a", "b", "c"}},
		{"-family", []string{"c", "b", "a", "s"}},
		{"identifier", []string{"s", "a", "b", "c"}},
		{"-identifier", []string{"c", "b", "a", "s"}},
		{"family,-_id", []string{"s", "a", "b", "c"}},
	} {
		t.Run(c.sort, func(t *testing.T) {
			r := ts.do(http.MethodGet, "/Patient?identifier=urn:sort|&_sort="+c.sort, nil).want(t, http.StatusOK)
			got := bundleIDs(r.JSON)
			for i := range got {
				got[i] = strings.TrimPrefix(got[i], "Patient/")
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("_sort=%s: %v, want %v", c.sort, got, c.want)
			}
		})
	}
}
