package fhir_test

import (
	"net/http"
	"testing"
	"time"
)

// TestReadVersionHeaders checks the headers FHIR R4 http.html#read and
// #versioning ask of every answer carrying a resource: ETag is W/"<the
// resource's meta.versionId>" and Last-Modified its meta.lastUpdated as an
// HTTP date (RFC 9110 section 5.6.7), once each, for a create, updates, a
// read and a vread of every version.
func TestReadVersionHeaders(t *testing.T) {
	ts := newServer(t)
	pat := `{"resourceType":"Patient","active":true}`
	c := ts.do(http.MethodPost, "/Patient", pat).want(t, http.StatusCreated)
	id := c.JSON["id"].(string)
	check := func(what string, r *result) {
		t.Helper()
		meta, _ := r.JSON["meta"].(map[string]any)
		vid, _ := meta["versionId"].(string)
		lu, err := time.Parse(time.RFC3339Nano, meta["lastUpdated"].(string))
		if err != nil || vid == "" {
			t.Fatalf("%s: meta %v", what, meta)
		}
		if got := r.Header.Values("ETag"); len(got) != 1 || got[0] != `W/"`+vid+`"` {
			t.Errorf("%s: ETag %q, want W/%q", what, got, vid)
		}
		if got, want := r.Header.Values("Last-Modified"), lu.UTC().Format(http.TimeFormat); len(got) != 1 || got[0] != want {
			t.Errorf("%s: Last-Modified %q, want %q", what, got, want)
		}
	}
	check("create", c)
	for v := 2; v <= 12; v++ {
		body := `{"resourceType":"Patient","id":"` + id + `","active":` + map[bool]string{true: "true", false: "false"}[v%2 == 0] + `}`
		check("update", ts.do(http.MethodPut, "/Patient/"+id, body).want(t, http.StatusOK))
	}
	r := ts.do(http.MethodGet, "/Patient/"+id, nil).want(t, http.StatusOK)
	if r.JSON["meta"].(map[string]any)["versionId"] != "12" {
		t.Fatalf("read answered version %v, want 12", r.JSON["meta"])
	}
	check("read", r)
	for _, v := range []string{"1", "2", "9", "10", "12"} {
		r := ts.do(http.MethodGet, "/Patient/"+id+"/_history/"+v, nil).want(t, http.StatusOK)
		if got := r.JSON["meta"].(map[string]any)["versionId"]; got != v {
			t.Errorf("vread %s answered version %v", v, got)
		}
		check("vread "+v, r)
	}
}
