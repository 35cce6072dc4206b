package mdm_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	td "github.com/p2pserver/p2pserver/internal/testdata"

	"github.com/go-chi/chi/v5"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/mdm"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

var pdexDir = td.Path("pdex")

// matchEnv is a payer's FHIR server on loopback with $member-match and
// $everything (honouring consents) enabled, as cmd/p2pserver wires them.
type matchEnv struct {
	t    *testing.T
	base string
	fhir *fhir.Server
}

func newMatchEnv(t *testing.T, now time.Time, guard func(base string) *smart.Guard) *matchEnv {
	t.Helper()
	return newMatchEnvWith(t, now, guard, mdm.MemberMatchConfig{})
}

// newMatchEnvWith is newMatchEnv with $member-match set up by cfg.
func newMatchEnvWith(t *testing.T, now time.Time, guard func(base string) *smart.Guard, cfg mdm.MemberMatchConfig) *matchEnv {
	t.Helper()
	db, err := store.OpenDB(context.Background(), storetest.DSN(t), store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(db, search.NewRegistry(spec.R4()), nil)
	if err != nil {
		t.Fatal(err)
	}
	mux := chi.NewRouter()
	srv := httptest.NewServer(mux)
	e := &matchEnv{t: t, base: srv.URL + "/fhir"}
	e.fhir = fhir.New(st, fhir.Config{BaseURL: e.base})
	if guard != nil {
		guard(e.base).Attach(e.fhir)
	}
	cfg.Logger = slog.New(slog.DiscardHandler)
	if !now.IsZero() {
		cfg.Now = func() time.Time { return now }
	}
	mm, err := mdm.NewMemberMatch(e.fhir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	mm.Register()
	e.fhir.EnableEverything(fhir.EverythingOptions{Withhold: mdm.Withhold})
	mux.Mount("/fhir", e.fhir.Handler())
	t.Cleanup(func() {
		srv.Close()
		st.Close()
		db.Close()
	})
	return e
}

type reply struct {
	status int
	body   []byte
	json   map[string]any
}

func (e *matchEnv) call(method, path, body string, headers ...string) *reply {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, e.base+path, rd)
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	r := &reply{status: resp.StatusCode}
	r.body, _ = io.ReadAll(resp.Body)
	_ = json.Unmarshal(r.body, &r.json)
	return r
}

func (e *matchEnv) load(docs ...string) {
	e.t.Helper()
	for _, d := range docs {
		var m map[string]any
		if err := json.Unmarshal([]byte(d), &m); err != nil {
			e.t.Fatalf("%v: %s", err, d)
		}
		if r := e.call("PUT", "/"+m["resourceType"].(string)+"/"+m["id"].(string), d); r.status != 201 && r.status != 200 {
			e.t.Fatalf("load %s: %d %s", d, r.status, r.body)
		}
	}
}

// Members of this payer (the "old payer" of the PDex example: its
// coverage identifiers are under http://example.org/old-payer).
var (
	patricia = `{"resourceType":"Patient","id":"pat-a","identifier":[{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MB"}]},
		"system":"http://example.org/old-payer/identifiers/member","value":"M-1001","assigner":{"display":"Old Health Plan"}}],
		"name":[{"use":"official","family":"Person","given":["Patricia","Ann"]}],"gender":"female","birthDate":"1974-12-25"}`
	patriciaCoverage = `{"resourceType":"Coverage","id":"cov-a","status":"active","identifier":[{"system":"http://example.org/old-payer","value":"DH10001235"}],
		"subscriberId":"1234564321","beneficiary":{"reference":"Patient/pat-a"},"payor":[{"display":"Old Health Plan"}]}`
	// Same demographics, another coverage: demographics alone never match.
	twin         = `{"resourceType":"Patient","id":"twin","name":[{"family":"PERSON","given":["patricia"]}],"gender":"female","birthDate":"1974-12-25"}`
	twinCoverage = `{"resourceType":"Coverage","id":"cov-twin","status":"active","identifier":[{"system":"http://example.org/old-payer","value":"DH99999999"}],
		"subscriberId":"999","beneficiary":{"reference":"Patient/twin"},"payor":[{"display":"Old Health Plan"}]}`
	william = `{"resourceType":"Patient","id":"will","name":[{"family":"Smith","given":["William"]}],"gender":"male","birthDate":"1958-12-25"}`
)

// pdexRequest builds a $member-match request from the PDex example's
// member (MemberPatient, CoverageToMatch, Consent, CoverageToLink), after
// change edits its resources by parameter name (a nil resource drops the
// parameter).
func pdexRequest(t *testing.T, change func(map[string]map[string]any)) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(pdexDir, "Parameters-payer-multi-member-match-in.json"))
	if err != nil {
		t.Fatal(err)
	}
	var in struct {
		Parameter []struct {
			Part []struct {
				Name     string         `json:"name"`
				Resource map[string]any `json:"resource"`
			} `json:"part"`
		} `json:"parameter"`
	}
	if err := json.Unmarshal(raw, &in); err != nil {
		t.Fatal(err)
	}
	res := map[string]map[string]any{}
	var order []string
	for _, p := range in.Parameter[0].Part {
		res[p.Name] = p.Resource
		order = append(order, p.Name)
	}
	if change != nil {
		change(res)
	}
	var params []any
	for _, name := range order {
		if res[name] != nil {
			params = append(params, map[string]any{"name": name, "resource": res[name]})
		}
	}
	b, _ := json.Marshal(map[string]any{"resourceType": "Parameters", "parameter": params})
	return string(b)
}

// exampleDay is inside the PDex example consent's period (2023-12-01 to
// 2024-03-31).
var exampleDay = time.Date(2024, 1, 15, 12, 0, 0, 0, time.UTC)

func TestMemberMatchUnique(t *testing.T) {
	t.Parallel()
	e := newMatchEnv(t, exampleDay, nil)
	e.load(patricia, patriciaCoverage, twin, twinCoverage, william)
	req := pdexRequest(t, nil)
	r := e.call("POST", "/Patient/$member-match", req)
	if r.status != 200 {
		t.Fatalf("member-match: %d %s", r.status, r.body)
	}
	if r.json["resourceType"] != "Parameters" {
		t.Fatalf("answer: %s", r.body)
	}
	params := r.json["parameter"].([]any)
	if len(params) != 1 {
		t.Fatalf("want MemberIdentifier alone (HRex 1.0.0): %s", r.body)
	}
	mi := params[0].(map[string]any)
	id := mi["valueIdentifier"].(map[string]any)
	coding := id["type"].(map[string]any)["coding"].([]any)[0].(map[string]any)
	if mi["name"] != "MemberIdentifier" || coding["system"] != "http://terminology.hl7.org/CodeSystem/v2-0203" || coding["code"] != "MB" ||
		id["system"] != "http://example.org/old-payer/identifiers/member" || id["value"] != "M-1001" {
		t.Errorf("MemberIdentifier: %v", mi)
	}
	// The identifier has the shape the PDex example answer gives its
	// members' identifiers: type MB, system, value, assigner.
	var out struct {
		Parameter []struct {
			Resource struct {
				Contained []struct {
					Identifier []map[string]any `json:"identifier"`
				} `json:"contained"`
			} `json:"resource"`
		} `json:"parameter"`
	}
	raw, err := os.ReadFile(filepath.Join(pdexDir, "Parameters-payer-multi-member-match-out.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	example := out.Parameter[0].Resource.Contained[0].Identifier[0]
	for k := range example {
		if _, ok := id[k]; !ok {
			t.Errorf("MemberIdentifier lacks %q, which the PDex example has: %v", k, id)
		}
	}
	exCoding := example["type"].(map[string]any)["coding"].([]any)[0].(map[string]any)
	if exCoding["system"] != coding["system"] || exCoding["code"] != coding["code"] {
		t.Errorf("MemberIdentifier type %v, the PDex example's %v", coding, exCoding)
	}

	// The consent is stored for the member, as the requester wrote it but
	// pointing at the member here; asking again stores nothing new.
	consents := e.call("GET", "/Consent?patient=pat-a", "")
	if n := len(entries(consents.json)); n != 1 {
		t.Fatalf("%d consents stored: %s", n, consents.body)
	}
	c := entries(consents.json)[0]
	if c["patient"].(map[string]any)["reference"] != "Patient/pat-a" ||
		c["performer"].([]any)[0].(map[string]any)["reference"] != "Patient/pat-a" ||
		c["policy"].([]any)[0].(map[string]any)["uri"] != mdm.PolicyRegular ||
		c["sourceReference"].(map[string]any)["reference"] != "http://example.org/DocumentReference/someconsent-1" ||
		!strings.Contains(string(consents.body), mdm.ConsentIdentifierSystem) || !strings.Contains(string(consents.body), `"code":"member-match"`) {
		t.Errorf("stored consent: %s", consents.body)
	}
	if r := e.call("POST", "/Patient/$member-match", req); r.status != 200 {
		t.Fatalf("second member-match: %d %s", r.status, r.body)
	}
	if n := len(entries(e.call("GET", "/Consent", "").json)); n != 1 {
		t.Errorf("the same request twice stored %d consents", n)
	}

	// A member found through the subscriber id alone, and through an
	// identifier the requester gives for the Patient.
	bySub := pdexRequest(t, func(r map[string]map[string]any) { delete(r["CoverageToMatch"], "identifier") })
	if r := e.call("POST", "/Patient/$member-match", bySub); r.status != 200 {
		t.Errorf("match by subscriberId: %d %s", r.status, r.body)
	}
	byPatientID := pdexRequest(t, func(r map[string]map[string]any) {
		r["CoverageToMatch"]["subscriberId"] = "nope"
		r["CoverageToMatch"]["identifier"] = []any{map[string]any{"system": "urn:x", "value": "nope"}}
		r["MemberPatient"]["identifier"] = []any{map[string]any{"system": "http://example.org/old-payer/identifiers/member", "value": "M-1001"}}
	})
	if r := e.call("POST", "/Patient/$member-match", byPatientID); r.status != 200 {
		t.Errorf("match by the Patient's identifier: %d %s", r.status, r.body)
	}
	// The operation is in the CapabilityStatement.
	if cs := e.call("GET", "/metadata", ""); !strings.Contains(string(cs.body), mdm.MemberMatchDefinition) {
		t.Error("$member-match is not in the CapabilityStatement")
	}
}

func entries(bundle map[string]any) []map[string]any {
	var out []map[string]any
	list, _ := bundle["entry"].([]any)
	for _, e := range list {
		em := e.(map[string]any)
		if s, _ := em["search"].(map[string]any); s != nil && s["mode"] != "match" {
			continue
		}
		out = append(out, em["resource"].(map[string]any))
	}
	return out
}

func TestMemberMatchNoneOrSeveral(t *testing.T) {
	t.Parallel()
	e := newMatchEnv(t, exampleDay, nil)
	e.load(patricia, patriciaCoverage, twin, twinCoverage, william)
	for _, c := range []struct {
		name   string
		change func(map[string]map[string]any)
		code   string
	}{
		{"another birth date", func(r map[string]map[string]any) { r["MemberPatient"]["birthDate"] = "1974-12-24" }, "not-found"},
		{"another family name", func(r map[string]map[string]any) {
			r["MemberPatient"]["name"] = []any{map[string]any{"family": "Persson", "given": []any{"Patricia"}}}
		}, "not-found"},
		{"another first name", func(r map[string]map[string]any) {
			r["MemberPatient"]["name"] = []any{map[string]any{"family": "Person", "given": []any{"Ann"}}}
		}, "not-found"},
		{"another gender", func(r map[string]map[string]any) { r["MemberPatient"]["gender"] = "male" }, "not-found"},
		{"demographics without a coverage tie", func(r map[string]map[string]any) {
			r["CoverageToMatch"]["identifier"] = []any{map[string]any{"system": "http://example.org/old-payer", "value": "DH00000000"}}
			r["CoverageToMatch"]["subscriberId"] = "000"
		}, "not-found"},
		{"a coverage of another system", func(r map[string]map[string]any) {
			r["CoverageToMatch"]["identifier"] = []any{map[string]any{"system": "http://example.org/another-payer", "value": "DH10001235"}}
			delete(r["CoverageToMatch"], "subscriberId")
		}, "not-found"},
	} {
		r := e.call("POST", "/Patient/$member-match", pdexRequest(t, c.change))
		if r.status != 422 || r.json["resourceType"] != "OperationOutcome" || !strings.Contains(string(r.body), `"code":"`+c.code+`"`) {
			t.Errorf("%s: %d %s, want 422 %s", c.name, r.status, r.body, c.code)
		}
	}
	// A duplicate record of the same member, with the same subscriber id:
	// two candidates.
	e.load(strings.Replace(patricia, `"id":"pat-a"`, `"id":"pat-a-dup"`, 1),
		`{"resourceType":"Coverage","id":"cov-dup","status":"cancelled","subscriberId":"1234564321","beneficiary":{"reference":"Patient/pat-a-dup"},"payor":[{"display":"Old Health Plan"}]}`)
	r := e.call("POST", "/Patient/$member-match", pdexRequest(t, nil))
	if r.status != 422 || !strings.Contains(string(r.body), `"code":"multiple-matches"`) || !strings.Contains(string(r.body), "2 members") {
		t.Errorf("two candidates: %d %s", r.status, r.body)
	}
	// Nothing was stored for either.
	if n := len(entries(e.call("GET", "/Consent", "").json)); n != 0 {
		t.Errorf("%d consents stored without a unique match", n)
	}
}

func TestMemberMatchRefusesBadRequests(t *testing.T) {
	t.Parallel()
	e := newMatchEnv(t, exampleDay, nil)
	e.load(patricia, patriciaCoverage)
	drop := func(name string) func(map[string]map[string]any) {
		return func(r map[string]map[string]any) { r[name] = nil }
	}
	for _, c := range []struct {
		name   string
		body   string
		status int
		say    string
	}{
		{"no Consent", pdexRequest(t, drop("Consent")), 400, "the Consent parameter"},
		{"no MemberPatient", pdexRequest(t, drop("MemberPatient")), 400, "the MemberPatient parameter"},
		{"no CoverageToMatch", pdexRequest(t, drop("CoverageToMatch")), 400, "the CoverageToMatch parameter"},
		{"CoverageToMatch is a Patient", pdexRequest(t, func(r map[string]map[string]any) {
			r["CoverageToMatch"] = map[string]any{"resourceType": "Patient"}
		}), 400, "must be a Coverage"},
		{"an invalid Patient", pdexRequest(t, func(r map[string]map[string]any) { r["MemberPatient"]["gender"] = "f" }), 400, "gender"},
		{"a partial birth date", pdexRequest(t, func(r map[string]map[string]any) { r["MemberPatient"]["birthDate"] = "1974" }), 400, "full date"},
		{"no family name", pdexRequest(t, func(r map[string]map[string]any) {
			r["MemberPatient"]["name"] = []any{map[string]any{"given": []any{"Patricia"}}}
		}), 400, "family name"},
		{"a coverage without identifier or subscriberId", pdexRequest(t, func(r map[string]map[string]any) {
			delete(r["CoverageToMatch"], "identifier")
			delete(r["CoverageToMatch"], "subscriberId")
		}), 400, "demographics alone"},
		{"an unknown parameter", `{"resourceType":"Parameters","parameter":[{"name":"Member","valueString":"x"}]}`, 400, "not a parameter of $member-match"},
		{"a parameter twice", strings.Replace(pdexRequest(t, nil), `"parameter":[`, `"parameter":[{"name":"Consent","resource":{"resourceType":"Consent","status":"active","scope":{"text":"x"},"category":[{"text":"x"}]}},`, 1), 400, "more than once"},
		{"not Parameters", `{"resourceType":"Patient"}`, 400, "Parameters"},
		{"not JSON", `{"resourceType":`, 400, "not valid JSON"},
		{"empty", ``, 400, "empty"},
		// Consents that cannot be honoured.
		{"an inactive consent", pdexRequest(t, func(r map[string]map[string]any) { r["Consent"]["status"] = "inactive" }), 422, "must be active"},
		{"a denying consent", pdexRequest(t, func(r map[string]map[string]any) {
			r["Consent"]["provision"].(map[string]any)["type"] = "deny"
		}), 422, "denies disclosure"},
		{"an ended consent", pdexRequest(t, func(r map[string]map[string]any) {
			r["Consent"]["provision"].(map[string]any)["period"] = map[string]any{"start": "2020-01-01", "end": "2023-12-31"}
		}), 422, "ended"},
		{"a consent without HRex policy", pdexRequest(t, func(r map[string]map[string]any) {
			r["Consent"]["policy"] = []any{map[string]any{"uri": "http://example.org/policy"}}
		}), 422, "must name its policy"},
		{"a consent about treatment", pdexRequest(t, func(r map[string]map[string]any) {
			r["Consent"]["scope"] = map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "treatment"}}}
		}), 422, "patient-privacy"},
	} {
		r := e.call("POST", "/Patient/$member-match", c.body)
		if r.status != c.status || r.json["resourceType"] != "OperationOutcome" || !strings.Contains(string(r.body), c.say) {
			t.Errorf("%s: %d %s, want %d saying %q", c.name, r.status, r.body, c.status, c.say)
		}
	}
	r := e.call("POST", "/Patient/$member-match", pdexRequest(t, nil), "Content-Type", "text/plain")
	if r.status != 415 {
		t.Errorf("text/plain: %d", r.status)
	}
	if r := e.call("GET", "/Patient/$member-match", ""); r.status != 405 {
		t.Errorf("GET: %d", r.status)
	}
	if n := len(entries(e.call("GET", "/Consent", "").json)); n != 0 {
		t.Errorf("refused requests stored %d consents", n)
	}
}

// TestMemberMatchConsentShapesEverything: the consent given at
// $member-match decides what $everything releases: with the HRex
// "regular" policy only non-sensitive resources, with "sensitive" all.
func TestMemberMatchConsentShapesEverything(t *testing.T) {
	t.Parallel()
	e := newMatchEnv(t, time.Time{}, nil)
	const psy = `"meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"PSY"}]},`
	e.load(patricia, patriciaCoverage, william,
		`{"resourceType":"Coverage","id":"cov-will","status":"active","subscriberId":"W-1","beneficiary":{"reference":"Patient/will"},"payor":[{"display":"Old Health Plan"}]}`,
		`{"resourceType":"Observation","id":"a-plain","status":"final","code":{"text":"weight"},"subject":{"reference":"Patient/pat-a"}}`,
		`{"resourceType":"Observation","id":"a-psy",`+psy+`"status":"final","code":{"text":"note"},"subject":{"reference":"Patient/pat-a"}}`,
		`{"resourceType":"Condition","id":"a-sud","subject":{"reference":"Patient/pat-a"},"code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"F10.20"}]}}`,
		`{"resourceType":"Condition","id":"a-htn","subject":{"reference":"Patient/pat-a"},"code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10-cm","code":"I10"}]}}`,
		`{"resourceType":"Observation","id":"w-psy",`+psy+`"status":"final","code":{"text":"note"},"subject":{"reference":"Patient/will"}}`,
	)
	everything := func(patient string) []string {
		r := e.call("GET", "/Patient/"+patient+"/$everything", "")
		if r.status != 200 {
			t.Fatalf("$everything %s: %d %s", patient, r.status, r.body)
		}
		var out []string
		for _, res := range entries(r.json) {
			out = append(out, res["resourceType"].(string)+"/"+res["id"].(string))
		}
		slices.Sort(out)
		return out
	}
	all := []string{"Condition/a-htn", "Condition/a-sud", "Coverage/cov-a", "Observation/a-plain", "Observation/a-psy", "Patient/pat-a"}
	if got := everything("pat-a"); !slices.Equal(got, all) {
		t.Fatalf("before any consent: %v", got)
	}
	inForce := func(policy string) func(map[string]map[string]any) {
		return func(r map[string]map[string]any) {
			r["Consent"]["provision"].(map[string]any)["period"] = map[string]any{"start": "2020-01-01", "end": "2999-12-31"}
			r["Consent"]["policy"] = []any{map[string]any{"uri": policy}}
		}
	}
	if r := e.call("POST", "/Patient/$member-match", pdexRequest(t, inForce(mdm.PolicyRegular))); r.status != 200 {
		t.Fatalf("member-match: %d %s", r.status, r.body)
	}
	got := everything("pat-a")
	want := []string{"Condition/a-htn", "Consent/", "Coverage/cov-a", "Observation/a-plain", "Patient/pat-a"}
	if len(got) != len(want) || !slices.EqualFunc(got, want, strings.HasPrefix) {
		t.Errorf("with the regular policy: %v, want %v", got, want)
	}
	// William consents to everything: his sensitive note goes.
	willReq := pdexRequest(t, func(r map[string]map[string]any) {
		inForce(mdm.PolicySensitive)(r)
		r["MemberPatient"]["name"] = []any{map[string]any{"family": "Smith", "given": []any{"William"}}}
		r["MemberPatient"]["gender"] = "male"
		r["MemberPatient"]["birthDate"] = "1958-12-25"
		r["CoverageToMatch"]["subscriberId"] = "W-1"
		delete(r["CoverageToMatch"], "identifier")
	})
	if r := e.call("POST", "/Patient/$member-match", willReq); r.status != 200 {
		t.Fatalf("member-match William: %d %s", r.status, r.body)
	}
	if got := everything("will"); !slices.Contains(got, "Observation/w-psy") {
		t.Errorf("with the sensitive policy: %v", got)
	}
}

// TestMemberMatchNeedsASystemToken: with tokens required, a payer's system
// token may match; a member's token, or one that cannot read Coverage,
// may not.
func TestMemberMatchNeedsASystemToken(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("new-payer", "secret")
	e := newMatchEnv(t, exampleDay, func(base string) *smart.Guard {
		g, err := smart.New(smart.Config{BaseURL: base, Logger: slog.New(slog.DiscardHandler), Issuers: []smart.Issuer{{URL: idp.Issuer()}}, AdminTokens: []string{"admin-token-0123456789abcdef"}})
		if err != nil {
			t.Fatal(err)
		}
		return g
	})
	admin := []string{"Authorization", "Bearer admin-token-0123456789abcdef"}
	for _, d := range []string{patricia, patriciaCoverage} {
		var m map[string]any
		_ = json.Unmarshal([]byte(d), &m)
		if r := e.call("PUT", "/"+m["resourceType"].(string)+"/"+m["id"].(string), d, admin...); r.status != 201 {
			t.Fatalf("load: %d %s", r.status, r.body)
		}
	}
	bearer := func(tok string, err error) []string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return []string{"Authorization", "Bearer " + tok}
	}
	sys := func(scopes ...string) []string {
		tok, err := idp.MintSystem(oidctest.SystemGrant{ClientID: "new-payer", Scopes: scopes, Audience: []string{e.base}})
		if err != nil {
			t.Fatal(err)
		}
		return bearer(tok.AccessToken, nil)
	}
	member, err := idp.MintFor([]string{e.base}, oidctest.Grant{ClientID: "new-payer", Patient: "pat-a", Scopes: []string{"patient/*.read"}})
	if err != nil {
		t.Fatal(err)
	}
	req := pdexRequest(t, nil)
	for _, c := range []struct {
		name    string
		headers []string
		status  int
	}{
		{"no token", nil, 401},
		{"member token", bearer(member.AccessToken, nil), 403},
		{"system token without Coverage", sys("system/Patient.rs"), 403},
		{"system token", sys("system/Patient.rs", "system/Coverage.rs"), 200},
		{"admin token", admin, 200},
	} {
		if r := e.call("POST", "/Patient/$member-match", req, c.headers...); r.status != c.status {
			t.Errorf("%s: %d %s, want %d", c.name, r.status, r.body, c.status)
		}
	}
	// The stored consent names the requesting client.
	r := e.call("GET", "/Consent", "", admin...)
	if !strings.Contains(string(r.body), "urn:p2pserver:requester:new-payer") {
		t.Errorf("consent source: %s", r.body)
	}
}
