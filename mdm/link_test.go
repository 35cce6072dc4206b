package mdm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	td "github.com/p2pserver/p2pserver/internal/testdata"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/mdm"
)

func decode(t *testing.T, raw []byte) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

func readPatient(t *testing.T, path string) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, raw)
}

func TestMemberIdentifier(t *testing.T) {
	typed := func(system, code, value string) string {
		return `{"type":{"coding":[{"system":"` + system + `","code":"` + code + `"}]},"system":"urn:sys:` + code + `","value":"` + value + `"}`
	}
	const v2, c4bb = mdm.V2IdentifierTypeSystem, mdm.C4BBIdentifierTypeSystem
	for _, tc := range []struct {
		name      string
		ids       string
		wantCode  string
		wantValue string
	}{
		{"member number beats medical record number", typed(v2, "MR", "mr1") + "," + typed(v2, "MB", "mb1"), "MB", "mb1"},
		{"unique member id beats member number", typed(v2, "MB", "mb1") + "," + typed(c4bb, "um", "um1"), "um", "um1"},
		{"first of two of the same type", typed(v2, "MB", "first") + "," + typed(v2, "MB", "second"), "MB", "first"},
		{"types outside CARIN BB are ignored", typed(v2, "SS", "999") + "," + typed(v2, "DL", "x") + "," + typed(c4bb, "pat", "acct"), "pat", "acct"},
		{"an identifier without value is skipped", `{"type":{"coding":[{"system":"` + v2 + `","code":"MB"}]}},` + typed(v2, "MR", "mr1"), "MR", "mr1"},
		{"a code of another system is not a CARIN BB type", typed("urn:other", "MB", "x"), "", ""},
		{"no identifiers", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := decode(t, []byte(`{"resourceType":"Patient","identifier":[`+tc.ids+`]}`))
			got, ok := mdm.MemberIdentifier(p)
			if ok != (tc.wantCode != "") || got.Type.Code != tc.wantCode || got.Value != tc.wantValue {
				t.Errorf("got %+v, %v; want code %q value %q", got, ok, tc.wantCode, tc.wantValue)
			}
			if ok && got.System != "urn:sys:"+tc.wantCode {
				t.Errorf("system %q not kept", got.System)
			}
		})
	}
	// Outside data: a PDex member with MB, MR, XV and PT identifiers, and a
	// Synthea patient with only a medical record number among CARIN types.
	got, ok := mdm.MemberIdentifier(readPatient(t, td.Path("pdex", "Patient-1-2.json")))
	if !ok || got.Type.Code != "MB" || got.System != "https://www.xxxhealthplan.com/fhir/memberidentifier" {
		t.Errorf("PDex Patient-1-2: %+v %v", got, ok)
	}
	files, _ := filepath.Glob(td.Path("synthea", "Angelic_Mueller_*.json"))
	if len(files) != 1 {
		t.Fatalf("Synthea bundle: %v", files)
	}
	var bundle struct {
		Entry []struct{ Resource json.RawMessage }
	}
	raw, _ := os.ReadFile(files[0])
	if err := json.Unmarshal(raw, &bundle); err != nil {
		t.Fatal(err)
	}
	for _, e := range bundle.Entry {
		if p := decode(t, e.Resource); p["resourceType"] == "Patient" {
			got, ok := mdm.MemberIdentifier(p)
			if !ok || got.Type.Code != "MR" || got.Value != "29d755a6-32fa-482e-8fdd-081300209df8" {
				t.Errorf("Synthea patient: %+v %v", got, ok)
			}
		}
	}
}

func openStore(t *testing.T) (*store.Store, *search.Registry) {
	t.Helper()
	db, err := store.OpenDB(context.Background(), storetest.DSN(t), store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	reg := search.NewRegistry(spec.R4())
	st, err := store.Open(db, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(); db.Close() })
	return st, reg
}

func put(t *testing.T, st *store.Store, doc *store.Doc) *store.Version {
	t.Helper()
	var v *store.Version
	if err := st.Write(context.Background(), func(tx *store.Tx) (err error) {
		v, err = tx.Put(doc, store.PutOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestLinkMember amends a stored member, finds it by the added identifier,
// and checks that a second ingestion changes nothing.
func TestLinkMember(t *testing.T) {
	st, reg := openStore(t)
	memberJSON := []byte(`{"resourceType":"Patient","id":"m1","identifier":[{"system":"urn:target:members","value":"T-1"}],"name":[{"family":"Mueller"}]}`)
	member := put(t, st, &store.Doc{Type: "Patient", ID: "m1", Map: decode(t, memberJSON), JSON: memberJSON})

	const system = "urn:p2p:source-member-id"
	l := mdm.NewLinker(system)
	src := mdm.Identifier{Type: mdm.PatientIdentifierTypes[1], System: "https://payer-a.example/members", Value: "MB-42"}
	by := mdm.Assigner{Name: "Payer A", OrganizationID: "ABCDE"}
	doc, err := l.AmendMember(member, src, by, "ingested1")
	if err != nil || doc == nil {
		t.Fatalf("AmendMember: %v, %v", doc, err)
	}
	if issues := spec.R4().Validate(doc.Map); len(issues) > 0 {
		t.Fatalf("amended member is not valid: %v", issues)
	}
	amended := put(t, st, doc)
	m := decode(t, amended.JSON)
	if n := len(m["identifier"].([]any)); n != 2 {
		t.Errorf("member has %d identifiers, want the original and the added one", n)
	}
	added := m["identifier"].([]any)[1].(map[string]any)
	if added["system"] != system || added["value"] != "MB-42" ||
		added["assigner"].(map[string]any)["display"] != "Payer A" ||
		added["type"].(map[string]any)["coding"].([]any)[0].(map[string]any)["code"] != "MB" {
		t.Errorf("added identifier %v", added)
	}
	if m["name"] == nil {
		t.Error("the member lost its name")
	}
	links := m["link"].([]any)
	if len(links) != 1 || links[0].(map[string]any)["other"].(map[string]any)["reference"] != "Patient/ingested1" || links[0].(map[string]any)["type"] != "seealso" {
		t.Errorf("links %v", links)
	}

	q, err := reg.Parse("Patient", url.Values{"identifier": {system + "|MB-42"}}, search.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	if err := st.View(context.Background(), func(tx *store.Tx) (err error) {
		ids, err = tx.Search(q)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids, []string{"m1"}) {
		t.Errorf("search by the added identifier found %v, want the member", ids)
	}

	again, err := l.AmendMember(amended, src, by, "ingested1")
	if err != nil || again != nil {
		t.Errorf("second ingestion changed the member again: %v, %v", again, err)
	}
	// Another payer's member number is added beside the first.
	other := src
	other.Value = "MB-77"
	doc, err = l.AmendMember(amended, other, mdm.Assigner{Name: "Payer B"}, "ingested2")
	if err != nil || doc == nil {
		t.Fatalf("second payer: %v, %v", doc, err)
	}
	if n := len(doc.Map["identifier"].([]any)); n != 3 {
		t.Errorf("%d identifiers after a second payer", n)
	}
	if n := len(doc.Map["link"].([]any)); n != 2 {
		t.Errorf("%d links after a second payer", n)
	}
}

func TestLinkIngested(t *testing.T) {
	raw := []byte(`{"resourceType":"Patient","id":"x","gender":"female"}`)
	doc := &store.Doc{Type: "Patient", ID: "x", Map: decode(t, raw), JSON: raw}
	l := mdm.NewLinker("urn:p2p:source-member-id")
	if changed, err := l.LinkIngested(doc, "m1"); err != nil || !changed {
		t.Fatalf("LinkIngested: %v %v", changed, err)
	}
	want := `{"resourceType":"Patient","id":"x","gender":"female","link":[{"other":{"reference":"Patient/m1"},"type":"seealso"}]}`
	if string(doc.JSON) != want {
		t.Errorf("linked JSON\n%s\nwant\n%s", doc.JSON, want)
	}
	if changed, err := l.LinkIngested(doc, "m1"); err != nil || changed {
		t.Errorf("linking twice: %v %v", changed, err)
	}
	if _, err := l.LinkIngested(&store.Doc{Type: "Observation", Map: map[string]any{}, JSON: []byte(`{}`)}, "m1"); err == nil {
		t.Error("linked an Observation")
	}
}

// TestLinkerWithoutSystem: without an identifier system the Linker still
// links the records both ways (the data brought over is the member's
// record), and adds no identifier.
func TestLinkerWithoutSystem(t *testing.T) {
	l := mdm.NewLinker("")
	if !l.Enabled() || l.AddsIdentifiers() {
		t.Fatalf("Enabled %v, AddsIdentifiers %v", l.Enabled(), l.AddsIdentifiers())
	}
	raw := []byte(`{"resourceType":"Patient","id":"x"}`)
	doc := &store.Doc{Type: "Patient", ID: "x", Map: decode(t, raw), JSON: raw}
	if changed, err := l.LinkIngested(doc, "m1"); !changed || err != nil || !strings.Contains(string(doc.JSON), `"reference":"Patient/m1"`) {
		t.Errorf("ingested copy not linked: %v %v %s", changed, err, doc.JSON)
	}
	member := &store.Version{Type: "Patient", ID: "m1", VersionID: 1, JSON: []byte(`{"resourceType":"Patient","id":"m1"}`)}
	doc, err := l.AmendMember(member, mdm.Identifier{Value: "v"}, mdm.Assigner{}, "x")
	if err != nil || doc == nil {
		t.Fatalf("member not amended: %v %v", doc, err)
	}
	want := `{"resourceType":"Patient","id":"m1","link":[{"other":{"reference":"Patient/x"},"type":"seealso"}]}`
	if string(doc.JSON) != want {
		t.Errorf("member\n%s\nwant\n%s", doc.JSON, want)
	}
	var nilLinker *mdm.Linker
	if changed, _ := nilLinker.LinkIngested(doc, "m1"); changed || nilLinker.Enabled() {
		t.Error("a nil Linker links")
	}
}
