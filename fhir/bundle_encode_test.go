package fhir

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

// Encode says the same as json.Marshal, whatever the entries hold: a
// fullUrl of plain characters or one encoding/json escapes, an entry with
// a search mode only or with request and response too, a resource this
// package marked compact (written as it is) or not (compacted).
func TestBundleEncodeMatchesMarshal(t *testing.T) {
	total := 3
	b := newBundle("searchset")
	b.Total = &total
	b.Link = []BundleLink{{Relation: "self", URL: "http://x/fhir/Patient?name=a&b=<c>"}}
	b.Entry = []BundleEntry{
		{FullURL: "http://x/fhir/Patient/1", Resource: json.RawMessage(`{"resourceType":"Patient","id":"1","text":{"div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">A &amp; B</div>"}}`), Search: &EntrySearch{Mode: "match"}},
		{FullURL: "urn:uuid:1", Resource: json.RawMessage("{ \"resourceType\" : \"Provenance\",\n \"id\":\"p\" }"), Search: &EntrySearch{Mode: "include"}},
		{Resource: json.RawMessage(`{"resourceType":"OperationOutcome","issue":[]}`), Search: &EntrySearch{Mode: "outcome"}},
		{FullURL: "http://x/fhir/Patient/2", Request: &EntryRequest{Method: "DELETE", URL: "Patient/2"}, Response: &EntryResponse{Status: "200 OK", Etag: `W/"2"`}},
		{},
		{FullURL: "http://x/fhir/Patient/3", Resource: json.RawMessage(`{"resourceType":"Patient","id":"3","name":[{"family":"O'Brien < & >"}]}`), Search: &EntrySearch{Mode: "match"}, compact: true},
		{FullURL: "http://x/fhir/Patient?a=1&b=<2>", Search: &EntrySearch{Mode: "include"}},
		{FullURL: "urn:x:\"quoted\"\\é\u2028", Search: &EntrySearch{Mode: "a\"b"}},
		{FullURL: "http://x/fhir/Patient/4", Search: &EntrySearch{Mode: "match"}, Response: &EntryResponse{Status: "200 OK"}},
		{Search: &EntrySearch{}},
	}
	got, err := b.Encode()
	if err != nil {
		t.Fatal(err)
	}
	want, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("Encode gave invalid JSON: %v\n%s", err, got)
	}
	_ = json.Unmarshal(want, &w)
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("Encode:\n%s\njson.Marshal:\n%s", got, want)
	}
	if !bytes.Contains(got, []byte(`"resource":{"resourceType":"Patient","id":"3","name":[{"family":"O'Brien < & >"}]}`)) {
		t.Errorf("the resource marked compact was not written as it is:\n%s", got)
	}
	empty := newBundle("history")
	if got, _ := empty.Encode(); !json.Valid(got) {
		t.Fatalf("empty bundle: %s", got)
	}
}
