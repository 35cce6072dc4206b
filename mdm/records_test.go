package mdm_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/mdm"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// The member's record across MDM links, as the server is wired
// (fhir.Server.SetPatientLinks(mdm.Linked)): the link rules, HAPI FHIR's
// :mdm modifier (https://hapifhir.io/hapi-fhir/docs/server_jpa_mdm/mdm_expansion.html),
// $everything, member tokens and who may write Patient.link.

const recordAdmin = "admin-token-0123456789abcdef"

// newRecordEnv is a payer's FHIR server following MDM links; with guarded,
// tokens from idp (and recordAdmin) are required.
func newRecordEnv(t *testing.T, idp *oidctest.Provider) *matchEnv {
	t.Helper()
	var guard func(string) *smart.Guard
	if idp != nil {
		guard = func(base string) *smart.Guard {
			g, err := smart.New(smart.Config{BaseURL: base, Logger: slog.New(slog.DiscardHandler),
				Issuers: []smart.Issuer{{URL: idp.Issuer()}}, AdminTokens: []string{recordAdmin}})
			if err != nil {
				t.Fatal(err)
			}
			return g
		}
	}
	e := newMatchEnv(t, time.Time{}, guard)
	e.fhir.SetPatientLinks(mdm.Linked)
	return e
}

// patient is a Patient with links, each "type Patient/id" (or another
// reference).
func patient(id string, links ...string) string {
	var ls []string
	for _, l := range links {
		typ, ref, _ := strings.Cut(l, " ")
		ls = append(ls, fmt.Sprintf(`{"other":{"reference":%q},"type":%q}`, ref, typ))
	}
	link := ""
	if len(ls) > 0 {
		link = `,"link":[` + strings.Join(ls, ",") + `]`
	}
	return fmt.Sprintf(`{"resourceType":"Patient","id":%q,"name":[{"family":%q}]%s}`, id, id, link)
}

// observation is an Observation about Patient/subject, with code text code.
func observation(id, subject, code string) string {
	return fmt.Sprintf(`{"resourceType":"Observation","id":%q,"status":"final","code":{"text":%q},"subject":{"reference":"Patient/%s"}}`, id, code, subject)
}

// refs lists "Type/id" of a searchset's entries of search mode mode ("" for
// any), in order.
func refs(t *testing.T, r *reply, mode string) []string {
	t.Helper()
	if r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	var out []string
	entries, _ := r.json["entry"].([]any)
	for _, e := range entries {
		em := e.(map[string]any)
		res := em["resource"].(map[string]any)
		if m, _ := em["search"].(map[string]any)["mode"].(string); mode != "" && m != mode {
			continue
		}
		out = append(out, res["resourceType"].(string)+"/"+res["id"].(string))
	}
	return out
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// TestLinkRules: which Patient.link make another Patient's data part of a
// member's record (mdm.Linked). R4 Patient.link: every link type names a
// resource that "concerns the same actual patient"; the server counts a
// link only when both Patients name each other, and only one level deep.
// Each row is checked through the :mdm modifier, $everything and
// $everything?_mdm=false.
func TestLinkRules(t *testing.T) {
	t.Parallel()
	e := newRecordEnv(t, nil)
	// In each row {m} is the member and {o}, {a} other Patients; each has
	// one Observation. linked are the Patients whose Observation is in the
	// member's record besides its own.
	for i, c := range []struct {
		name     string
		patients []string
		linked   []string
	}{
		{"seealso both ways (as batch ingestion links)", []string{patient("{m}", "seealso Patient/{o}"), patient("{o}", "seealso Patient/{m}")}, []string{"o"}},
		{"replaces and replaced-by (a merge)", []string{patient("{m}", "replaces Patient/{o}"), patient("{o}", "replaced-by Patient/{m}")}, []string{"o"}},
		{"replaced-by from the retired record", []string{patient("{m}", "replaced-by Patient/{o}"), patient("{o}", "replaces Patient/{m}")}, []string{"o"}},
		{"refer answered by seealso", []string{patient("{m}", "refer Patient/{o}"), patient("{o}", "seealso Patient/{m}")}, []string{"o"}},
		{"versioned references", []string{patient("{m}", "seealso Patient/{o}/_history/1"), patient("{o}", "seealso Patient/{m}/_history/3")}, []string{"o"}},
		{"only the member links", []string{patient("{m}", "seealso Patient/{o}"), patient("{o}")}, nil},
		{"only the other links (it is in the member's compartment, its data is not)", []string{patient("{m}"), patient("{o}", "seealso Patient/{m}")}, nil},
		{"the other links to someone else", []string{patient("{m}", "seealso Patient/{o}"), patient("{o}", "seealso Patient/{a}"), patient("{a}")}, nil},
		{"one level: the linked record's links are not followed", []string{
			patient("{m}", "seealso Patient/{o}"), patient("{o}", "seealso Patient/{m}", "seealso Patient/{a}"), patient("{a}", "seealso Patient/{o}")}, []string{"o"}},
		{"two linked records", []string{patient("{m}", "seealso Patient/{o}", "replaces Patient/{a}"),
			patient("{o}", "seealso Patient/{m}"), patient("{a}", "replaced-by Patient/{m}")}, []string{"a", "o"}},
		{"a RelatedPerson is not a Patient", []string{patient("{m}", "seealso RelatedPerson/{o}"), patient("{o}", "seealso Patient/{m}")}, nil},
		{"absolute URLs are not followed", []string{patient("{m}", "seealso http://elsewhere.example/fhir/Patient/{o}"), patient("{o}", "seealso Patient/{m}")}, nil},
		{"a link to itself adds nothing", []string{patient("{m}", "seealso Patient/{m}"), patient("{o}")}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			row := fmt.Sprintf("r%02d", i)
			ids := strings.NewReplacer("{m}", row+"-m", "{o}", row+"-o", "{a}", row+"-a")
			for _, d := range c.patients {
				var p map[string]any
				if err := json.Unmarshal([]byte(ids.Replace(d)), &p); err != nil {
					t.Fatal(err)
				}
				id := p["id"].(string)
				e.load(ids.Replace(d), observation(id+"-obs", id, row))
			}
			m := row + "-m"
			want := []string{"Observation/" + m + "-obs"}
			for _, l := range c.linked {
				want = append(want, "Observation/"+row+"-"+l+"-obs")
			}
			want = sorted(want)
			if got := sorted(refs(t, e.call("GET", "/Observation?subject:mdm=Patient/"+m, ""), "")); !slices.Equal(got, want) {
				t.Errorf("subject:mdm: %v, want %v", got, want)
			}
			var obs []string
			for _, r := range refs(t, e.call("GET", "/Patient/"+m+"/$everything", ""), "match") {
				if strings.HasPrefix(r, "Observation/") {
					obs = append(obs, r)
				}
			}
			if got := sorted(obs); !slices.Equal(got, want) {
				t.Errorf("$everything: %v, want %v", got, want)
			}
			own := refs(t, e.call("GET", "/Patient/"+m+"/$everything?_mdm=false&_type=Observation", ""), "match")
			if !slices.Equal(own, []string{"Observation/" + m + "-obs"}) {
				t.Errorf("$everything?_mdm=false: %v", own)
			}
			if got := refs(t, e.call("GET", "/Observation?subject=Patient/"+m, ""), ""); !slices.Equal(got, []string{"Observation/" + m + "-obs"}) {
				t.Errorf("subject without :mdm: %v", got)
			}
		})
	}
	// A linked Patient deleted (by an admin) takes its data out of the
	// member's record.
	e.load(patient("del-m", "seealso Patient/del-o"), patient("del-o", "seealso Patient/del-m"), observation("del-o-obs", "del-o", "x"))
	if got := refs(t, e.call("GET", "/Observation?subject:mdm=Patient/del-m", ""), ""); !slices.Equal(got, []string{"Observation/del-o-obs"}) {
		t.Fatalf("before the delete: %v", got)
	}
	if r := e.call("DELETE", "/Patient/del-o", ""); r.status != 200 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if got := refs(t, e.call("GET", "/Observation?subject:mdm=Patient/del-m", ""), ""); len(got) != 0 {
		t.Errorf("after the linked Patient was deleted: %v", got)
	}
}

// TestMDMModifier: :mdm on several reference parameters and types, with
// values written as HAPI FHIR and FHIR allow (Patient/id, id, absolute URL,
// several values), combined with other parameters; refused with a clear
// 400 where it cannot apply.
func TestMDMModifier(t *testing.T) {
	t.Parallel()
	e := newRecordEnv(t, nil)
	e.load(
		patient("m1", "seealso Patient/i1"), patient("i1", "seealso Patient/m1"),
		patient("m2", "seealso Patient/i2"), patient("i2", "seealso Patient/m2"),
		observation("o-m1", "m1", "bp"), observation("o-i1", "i1", "bp"), observation("o-i1-hr", "i1", "hr"),
		observation("o-m2", "m2", "bp"), observation("o-i2", "i2", "bp"),
		`{"resourceType":"Condition","id":"c-i1","subject":{"reference":"Patient/i1"}}`,
		`{"resourceType":"Condition","id":"c-m2","subject":{"reference":"Patient/m2"}}`,
		`{"resourceType":"Encounter","id":"e-i1","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/i1"}}`,
		`{"resourceType":"Coverage","id":"cov-i1","status":"active","beneficiary":{"reference":"Patient/i1"},"payor":[{"display":"Old Health Plan"}]}`,
		`{"resourceType":"Coverage","id":"cov-m1","status":"active","beneficiary":{"reference":"Patient/m1"},"payor":[{"display":"New Health Plan"}]}`,
		`{"resourceType":"ExplanationOfBenefit","id":"eob-i1","status":"active","type":{"text":"x"},"use":"claim","patient":{"reference":"Patient/i1"},"created":"2024-01-01","insurer":{"display":"Old"},"provider":{"display":"Dr"},"outcome":"complete","insurance":[{"focal":true,"coverage":{"reference":"Coverage/cov-i1"}}]}`,
	)
	for _, c := range []struct {
		query string
		want  []string
	}{
		{"Observation?subject:mdm=Patient/m1", []string{"Observation/o-i1", "Observation/o-i1-hr", "Observation/o-m1"}},
		{"Observation?patient:mdm=Patient/m1", []string{"Observation/o-i1", "Observation/o-i1-hr", "Observation/o-m1"}},
		{"Observation?patient:mdm=m1", []string{"Observation/o-i1", "Observation/o-i1-hr", "Observation/o-m1"}},
		{"Observation?subject:mdm=" + url.QueryEscape(e.base+"/Patient/m1"), []string{"Observation/o-i1", "Observation/o-i1-hr", "Observation/o-m1"}},
		{"Observation?subject:mdm=Patient/m1&code:text=bp", []string{"Observation/o-i1", "Observation/o-m1"}},
		{"Observation?subject:mdm=Patient/m1,Patient/m2", []string{"Observation/o-i1", "Observation/o-i1-hr", "Observation/o-i2", "Observation/o-m1", "Observation/o-m2"}},
		// Expansion works from either side of a link.
		{"Observation?subject:mdm=Patient/i1", []string{"Observation/o-i1", "Observation/o-i1-hr", "Observation/o-m1"}},
		{"Observation?subject:mdm=Patient/nobody", nil},
		{"Condition?subject:mdm=Patient/m1", []string{"Condition/c-i1"}},
		{"Condition?patient:mdm=Patient/m2", []string{"Condition/c-m2"}},
		{"Encounter?patient:mdm=Patient/m1", []string{"Encounter/e-i1"}},
		{"Coverage?beneficiary:mdm=Patient/m1", []string{"Coverage/cov-i1", "Coverage/cov-m1"}},
		{"ExplanationOfBenefit?patient:mdm=Patient/m1", []string{"ExplanationOfBenefit/eob-i1"}},
		// Without :mdm a reference is the one Patient.
		{"Observation?subject=Patient/m1", []string{"Observation/o-m1"}},
		{"Coverage?beneficiary=Patient/m1", []string{"Coverage/cov-m1"}},
	} {
		r := e.call("GET", "/"+c.query, "")
		if got := sorted(refs(t, r, "match")); !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.query, got, c.want)
		}
	}
	// Paging keeps the expanded result set, and the self link the modifier.
	r := e.call("GET", "/Observation?subject:mdm=Patient/m1&_count=2&_total=accurate", "")
	if n, _ := r.json["total"].(float64); n != 3 || !strings.Contains(string(r.body), "subject%3Amdm=Patient%2Fm1") {
		t.Errorf("first page: total %v %s", r.json["total"], r.body)
	}
	for _, c := range []struct{ query, says string }{
		{"Observation?code:mdm=bp", "reference parameters"},
		{"Observation?subject:mdm=Group/g1", "Patient"},
		{"Observation?performer:mdm=Practitioner/p1", "Patient"},
		{"Encounter?service-provider:mdm=Patient/m1", "cannot refer to a Patient"},
		{"Observation?subject:mdm.name=m1", "cannot be chained"},
		{"Observation?subject:mdm=", "Patient"},
	} {
		r := e.call("GET", "/"+c.query, "")
		if r.status != 400 || r.json["resourceType"] != "OperationOutcome" || !strings.Contains(string(r.body), c.says) {
			t.Errorf("%s: %d %s, want 400 saying %q", c.query, r.status, r.body, c.says)
		}
	}
}

// TestCapabilityStatementAdvertisesMDM: the reference parameters that
// accept :mdm say so, each of them does, and $everything documents _mdm.
func TestCapabilityStatementAdvertisesMDM(t *testing.T) {
	t.Parallel()
	e := newRecordEnv(t, nil)
	e.load(patient("m1", "seealso Patient/i1"), patient("i1", "seealso Patient/m1"))
	cs := e.call("GET", "/metadata", "")
	var doc struct {
		Rest []struct {
			Resource []struct {
				Type        string `json:"type"`
				SearchParam []struct {
					Name, Type, Documentation string
				} `json:"searchParam"`
				Operation []struct {
					Name, Documentation string
				} `json:"operation"`
			} `json:"resource"`
		} `json:"rest"`
	}
	if err := json.Unmarshal(cs.body, &doc); err != nil {
		t.Fatal(err)
	}
	advertised, refused := 0, 0
	for _, res := range doc.Rest[0].Resource {
		for _, sp := range res.SearchParam {
			mdmDoc := strings.Contains(sp.Documentation, ":mdm")
			core := map[string]bool{"Observation": true, "Condition": true, "ExplanationOfBenefit": true, "Coverage": true, "Encounter": true, "Provenance": true}
			if !core[res.Type] {
				if mdmDoc {
					advertised++
				}
				continue
			}
			r := e.call("GET", "/"+res.Type+"?"+url.Values{sp.Name + ":mdm": {"Patient/m1"}, "_summary": {"count"}}.Encode(), "")
			switch {
			case mdmDoc && r.status != 200:
				t.Errorf("%s?%s:mdm advertised but answers %d %s", res.Type, sp.Name, r.status, r.body)
			case !mdmDoc && r.status != 400:
				t.Errorf("%s?%s:mdm not advertised but answers %d", res.Type, sp.Name, r.status)
			case mdmDoc:
				advertised++
			default:
				refused++
			}
		}
		if res.Type == "Patient" {
			found := false
			for _, op := range res.Operation {
				found = found || op.Name == "everything" && strings.Contains(op.Documentation, "_mdm=false")
			}
			if !found {
				t.Error("Patient $everything does not document _mdm")
			}
		}
	}
	if advertised < 50 || refused < 20 {
		t.Errorf("%d parameters advertise :mdm, %d refuse it", advertised, refused)
	}
}

// recordFixtures: m1 and m2 are members, each linked with the ingested
// copy of their Patient at another payer (i1, i2). x is a record linked
// with m2 that the source payer also linked with i1 (both ways): one
// level deep, it belongs to m2's record and never reaches m1's. z links to
// m1 on its own (so it is in m1's compartment by the R4
// CompartmentDefinition) but m1 does not link back.
var recordFixtures = []string{
	patient("m1", "seealso Patient/i1"), patient("i1", "seealso Patient/m1", "seealso Patient/x"),
	patient("m2", "seealso Patient/i2", "seealso Patient/x"), patient("i2", "seealso Patient/m2"),
	patient("x", "seealso Patient/m2", "seealso Patient/i1"),
	patient("z", "seealso Patient/m1"),
	observation("o-m1", "m1", "bp"), observation("o-i1", "i1", "bp"),
	observation("o-m2", "m2", "bp"), observation("o-i2", "i2", "bp"),
	observation("o-x", "x", "bp"), observation("o-z", "z", "bp"),
	`{"resourceType":"Practitioner","id":"dr"}`,
	`{"resourceType":"Condition","id":"c-i1","subject":{"reference":"Patient/i1"},"asserter":{"reference":"Practitioner/dr"}}`,
}

// TestMemberTokenReadsLinkedRecords: a token whose SMART patient context is
// the member reads the records linked to the member as its own, by every
// read path (read, history, search with and without :mdm, includes, batch
// entries, $everything), and nothing of other members or their linked
// records.
func TestMemberTokenReadsLinkedRecords(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("portal", "portal-secret")
	e := newRecordEnv(t, idp)
	admin := []string{"Authorization", "Bearer " + recordAdmin}
	for _, d := range recordFixtures {
		var m map[string]any
		_ = json.Unmarshal([]byte(d), &m)
		if r := e.call("PUT", "/"+m["resourceType"].(string)+"/"+m["id"].(string), d, admin...); r.status != 201 {
			t.Fatalf("load: %d %s", r.status, r.body)
		}
	}
	token := func(member string) []string {
		tok, err := idp.MintFor([]string{e.base}, oidctest.Grant{ClientID: "portal", Patient: member, Scopes: []string{"openid", "patient/*.read"}})
		if err != nil {
			t.Fatal(err)
		}
		return []string{"Authorization", "Bearer " + tok.AccessToken}
	}
	m1, m2 := token("m1"), token("m2")
	name := map[string]string{m1[1]: "m1", m2[1]: "m2"}

	for _, c := range []struct {
		who     []string
		path    string
		visible bool
	}{
		{m1, "/Patient/m1", true},
		{m1, "/Patient/i1", true},
		{m1, "/Observation/o-i1", true},
		{m1, "/Observation/o-i1/_history/1", true},
		{m1, "/Observation/o-i1/_history", true},
		{m1, "/Condition/c-i1", true},
		{m1, "/Patient/z", true}, // in m1's compartment (z links to m1)
		{m1, "/Observation/o-z", false},
		{m1, "/Patient/m2", false},
		{m1, "/Observation/o-m2", false},
		{m1, "/Patient/i2", false},
		{m1, "/Observation/o-i2", false},
		{m1, "/Patient/x", false}, // linked to i1, but it is m2's record
		{m1, "/Observation/o-x", false},
		{m1, "/Observation/o-x/_history", false},
		{m2, "/Observation/o-x", true},
		{m2, "/Patient/x", true},
		{m2, "/Observation/o-i1", false},
		{m2, "/Patient/i1", false},
		{m2, "/Condition/c-i1", false},
	} {
		want := 404
		if c.visible {
			want = 200
		}
		if r := e.call("GET", c.path, "", c.who...); r.status != want {
			t.Errorf("%s as %s: %d, want %d", c.path, name[c.who[1]], r.status, want)
		}
	}
	for _, c := range []struct {
		who   []string
		query string
		want  []string
	}{
		{m1, "/Observation", []string{"Observation/o-i1", "Observation/o-m1"}},
		{m1, "/Observation?code:text=bp", []string{"Observation/o-i1", "Observation/o-m1"}},
		{m1, "/Patient", []string{"Patient/i1", "Patient/m1", "Patient/z"}},
		{m1, "/Observation?subject:mdm=Patient/m1", []string{"Observation/o-i1", "Observation/o-m1"}},
		{m1, "/Observation?subject=Patient/i1", []string{"Observation/o-i1"}},
		{m1, "/Observation?subject:mdm=Patient/m2", nil},
		{m1, "/Observation?subject:mdm=Patient/i1", []string{"Observation/o-i1", "Observation/o-m1"}},
		{m1, "/Observation?subject=Patient/x", nil},
		{m1, "/Condition?patient:mdm=m1", []string{"Condition/c-i1"}},
		{m2, "/Observation", []string{"Observation/o-i2", "Observation/o-m2", "Observation/o-x"}},
		{m2, "/Observation?subject:mdm=Patient/m1", nil},
		{m2, "/Patient", []string{"Patient/i2", "Patient/m2", "Patient/x"}},
	} {
		if got := sorted(refs(t, e.call("GET", c.query, "", c.who...), "match")); !slices.Equal(got, c.want) {
			t.Errorf("%s as %s: %v, want %v", c.query, name[c.who[1]], got, c.want)
		}
	}
	// Includes reach the linked records, never another member's.
	r := e.call("GET", "/Observation?_include=Observation:subject", "", m1...)
	if got := sorted(refs(t, r, "include")); !slices.Equal(got, []string{"Patient/i1", "Patient/m1"}) {
		t.Errorf("includes as m1: %v", got)
	}
	// x links to i1 and o-z names z: neither is m1's. (The Patients that
	// link to the matches are matches already, so not included again.)
	r = e.call("GET", "/Patient?_revinclude=Observation:subject&_revinclude=Patient:link", "", m1...)
	if got := sorted(refs(t, r, "include")); !slices.Equal(got, []string{"Observation/o-i1", "Observation/o-m1"}) {
		t.Errorf("revincludes as m1: %v", got)
	}
	// A batch of reads answers each as the member's own or not found.
	batch := `{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation/o-i1"}},{"request":{"method":"GET","url":"Observation/o-i2"}},{"request":{"method":"GET","url":"Observation?subject:mdm=Patient/m1"}}]}`
	r = e.call("POST", "", batch, m1...)
	if r.status != 200 {
		t.Fatalf("batch: %d %s", r.status, r.body)
	}
	var statuses []string
	for _, en := range r.json["entry"].([]any) {
		statuses = append(statuses, en.(map[string]any)["response"].(map[string]any)["status"].(string)[:3])
	}
	if !slices.Equal(statuses, []string{"200", "404", "200"}) || !strings.Contains(string(r.body), `"total":2`) {
		t.Errorf("batch statuses %v: %s", statuses, r.body)
	}

	// $everything: the member's record with the linked records; asked for
	// a linked Patient, still only the member's record.
	everything := map[string][]string{
		"m1": {"Condition/c-i1", "Observation/o-i1", "Observation/o-m1", "Patient/i1", "Patient/m1", "Patient/z"},
		"i1": {"Condition/c-i1", "Observation/o-i1", "Observation/o-m1", "Patient/i1", "Patient/m1"},
	}
	for id, want := range everything {
		r := e.call("GET", "/Patient/"+id+"/$everything", "", m1...)
		if got := sorted(refs(t, r, "match")); !slices.Equal(got, want) {
			t.Errorf("Patient/%s/$everything as m1: %v, want %v", id, got, want)
		}
		if inc := refs(t, r, "include"); !slices.Equal(inc, []string{"Practitioner/dr"}) {
			t.Errorf("Patient/%s/$everything as m1 includes %v", id, inc)
		}
	}
	if got := sorted(refs(t, e.call("GET", "/Patient/m1/$everything?_mdm=false", "", m1...), "match")); !slices.Equal(got, []string{"Observation/o-m1", "Patient/i1", "Patient/m1", "Patient/z"}) {
		t.Errorf("$everything?_mdm=false as m1: %v", got)
	}
	for _, id := range []string{"m2", "i2", "x"} {
		if r := e.call("GET", "/Patient/"+id+"/$everything", "", m1...); r.status != 404 {
			t.Errorf("Patient/%s/$everything as m1: %d", id, r.status)
		}
	}
	if got := sorted(refs(t, e.call("GET", "/Patient/m2/$everything", "", m2...), "match")); !slices.Equal(got, []string{"Observation/o-i2", "Observation/o-m2", "Observation/o-x", "Patient/i2", "Patient/m2", "Patient/x"}) {
		t.Errorf("Patient/m2/$everything as m2: %v", got)
	}
}

// TestLinkWritesRefused: Patient.link decides whose record data belongs
// to, so only the server's own jobs (batch ingestion) and admins may add,
// change or remove a link, or delete a linked Patient. A member cannot
// link their Patient to another member's, by any write path, and a
// refused write changes nothing.
func TestLinkWritesRefused(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("portal", "portal-secret")
	e := newRecordEnv(t, idp)
	admin := []string{"Authorization", "Bearer " + recordAdmin}
	for _, d := range recordFixtures {
		var m map[string]any
		_ = json.Unmarshal([]byte(d), &m)
		if r := e.call("PUT", "/"+m["resourceType"].(string)+"/"+m["id"].(string), d, admin...); r.status != 201 {
			t.Fatalf("load: %d %s", r.status, r.body)
		}
	}
	tok, err := idp.MintFor([]string{e.base}, oidctest.Grant{ClientID: "portal", Patient: "m1", Scopes: []string{"openid", "patient/*.read", "patient/*.write"}})
	if err != nil {
		t.Fatal(err)
	}
	m1 := []string{"Authorization", "Bearer " + tok.AccessToken}
	sys, err := idp.MintSystem(oidctest.SystemGrant{ClientID: "portal", Scopes: []string{"system/*.read", "system/*.write"}, Audience: []string{e.base}})
	if err != nil {
		t.Fatal(err)
	}
	system := []string{"Authorization", "Bearer " + sys.AccessToken}
	withName := func(doc, family string) string {
		return strings.Replace(doc, `"name":[{"family":"m1"}]`, `"name":[{"family":"`+family+`"}]`, 1)
	}
	for _, c := range []struct {
		name, method, path, body string
		who                      []string
		status                   int
	}{
		{"member adds a link to another member", "PUT", "/Patient/m1", patient("m1", "seealso Patient/i1", "seealso Patient/m2"), m1, 403},
		{"member replaces the link", "PUT", "/Patient/m1", patient("m1", "seealso Patient/m2"), m1, 403},
		{"member changes the link type", "PUT", "/Patient/m1", patient("m1", "replaces Patient/i1"), m1, 403},
		{"member removes the links", "PUT", "/Patient/m1", patient("m1"), m1, 403},
		{"member links the ingested copy to another member", "PUT", "/Patient/i1", patient("i1", "seealso Patient/m1", "seealso Patient/m2"), m1, 403},
		{"member creates a Patient linked to them", "POST", "/Patient", patient("new", "seealso Patient/m1"), m1, 403},
		// A member cannot choose a new resource's id: an id nobody has
		// answers as one that is another's (not found means not found).
		{"member creates a Patient by PUT linked to them", "PUT", "/Patient/m1-bis", patient("m1-bis", "seealso Patient/m1"), m1, 404},
		{"member deletes the linked ingested copy", "DELETE", "/Patient/i1", "", m1, 403},
		{"member adds a link in a transaction", "POST", "", `{"resourceType":"Bundle","type":"transaction","entry":[
			{"request":{"method":"POST","url":"Observation"},"resource":` + observation("o-new", "m1", "bp") + `},
			{"request":{"method":"PUT","url":"Patient/m1"},"resource":` + patient("m1", "seealso Patient/i1", "seealso Patient/m2") + `}]}`, m1, 403},
		{"member adds a link by conditional update", "PUT", "/Patient?_id=m1", patient("m1", "seealso Patient/i1", "seealso Patient/m2"), m1, 403},
		{"member writes into a linked record (writes stay in the member's own compartment)", "PUT", "/Observation/o-i1", observation("o-i1", "i1", "changed"), m1, 403},
		{"a system token adds a link", "PUT", "/Patient/m2", patient("m2", "seealso Patient/i2", "seealso Patient/x", "seealso Patient/m1"), system, 403},
		{"a system token deletes a linked Patient", "DELETE", "/Patient/x", "", system, 403},
		// Allowed: the member's own data, links sent as they are.
		{"member updates their Patient with the links as they are", "PUT", "/Patient/m1", withName(patient("m1", "seealso Patient/i1"), "Mueller"), m1, 200},
		{"member writes their own Observation", "PUT", "/Observation/o-m1", observation("o-m1", "m1", "changed"), m1, 200},
		{"a system token updates a Patient without touching its links", "PUT", "/Patient/x", strings.Replace(patient("x", "seealso Patient/m2", "seealso Patient/i1"), `"family":"x"`, `"family":"X"`, 1), system, 200},
	} {
		r := e.call(c.method, c.path, c.body, c.who...)
		if r.status != c.status {
			t.Errorf("%s: %d %s, want %d", c.name, r.status, r.body, c.status)
			continue
		}
		if c.status == 403 && (r.json["resourceType"] != "OperationOutcome" || !strings.Contains(string(r.body), "link") && !strings.Contains(string(r.body), "compartment")) {
			t.Errorf("%s: the refusal does not say why: %s", c.name, r.body)
		}
	}
	// Nothing refused was written: the links are as loaded, the
	// transaction's Observation is not there, and m1 still sees nothing of
	// m2.
	for id, want := range map[string]string{
		"m1": `[{"other":{"reference":"Patient/i1"},"type":"seealso"}]`,
		"i1": `[{"other":{"reference":"Patient/m1"},"type":"seealso"},{"other":{"reference":"Patient/x"},"type":"seealso"}]`,
		"m2": `[{"other":{"reference":"Patient/i2"},"type":"seealso"},{"other":{"reference":"Patient/x"},"type":"seealso"}]`,
	} {
		r := e.call("GET", "/Patient/"+id, "", admin...)
		got, _ := json.Marshal(r.json["link"])
		if string(got) != want {
			t.Errorf("Patient/%s links %s, want %s", id, got, want)
		}
	}
	for _, path := range []string{"/Patient/new", "/Patient/m1-bis", "/Observation/o-new"} {
		if r := e.call("GET", path, "", admin...); r.status != 404 {
			t.Errorf("%s: %d after a refused write", path, r.status)
		}
	}
	if r := e.call("GET", "/Patient/i1", "", admin...); r.status != 200 {
		t.Errorf("the linked copy after a refused delete: %d", r.status)
	}
	if got := sorted(refs(t, e.call("GET", "/Observation", "", m1...), "match")); !slices.Equal(got, []string{"Observation/o-i1", "Observation/o-m1"}) {
		t.Errorf("m1's record after the refused writes: %v", got)
	}
	// An admin may link (here m1 with m2 both ways): then, and only then,
	// m2's record is m1's.
	for _, d := range []string{
		patient("m1", "seealso Patient/i1", "seealso Patient/m2"),
		patient("m2", "seealso Patient/i2", "seealso Patient/x", "seealso Patient/m1"),
	} {
		var m map[string]any
		_ = json.Unmarshal([]byte(d), &m)
		if r := e.call("PUT", "/Patient/"+m["id"].(string), d, admin...); r.status != 200 {
			t.Fatalf("admin links: %d %s", r.status, r.body)
		}
	}
	if got := sorted(refs(t, e.call("GET", "/Observation", "", m1...), "match")); !slices.Equal(got, []string{"Observation/o-i1", "Observation/o-m1", "Observation/o-m2"}) {
		t.Errorf("m1's record after an admin linked m2: %v", got)
	}
}
