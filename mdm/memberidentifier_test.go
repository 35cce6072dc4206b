package mdm_test

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/spec"
	td "github.com/p2pserver/p2pserver/internal/testdata"
	"github.com/p2pserver/p2pserver/mdm"
)

// matchedPatient is patricia's demographics under the id pat-a with the
// identifiers given (JSON array members), so that the PDex example request
// matches it through cov-a's subscriber id whatever its identifiers are.
func matchedPatient(identifiers ...string) string {
	ids := ""
	if len(identifiers) > 0 {
		ids = `"identifier":[` + strings.Join(identifiers, ",") + `],`
	}
	return `{"resourceType":"Patient","id":"pat-a",` + ids + `"name":[{"family":"Person","given":["Patricia"]}],"gender":"female","birthDate":"1974-12-25"}`
}

// other is another member (not matched: other demographics, no coverage)
// holding the identifiers given.
func other(id string, identifiers ...string) string {
	return `{"resourceType":"Patient","id":"` + id + `","identifier":[` + strings.Join(identifiers, ",") +
		`],"name":[{"family":"Other","given":["Olga"]}],"gender":"female","birthDate":"1960-01-01"}`
}

func typed(system, code, idSystem, value string, more ...string) string {
	extra := ""
	if len(more) > 0 {
		extra = "," + strings.Join(more, ",")
	}
	return fmt.Sprintf(`{"type":{"coding":[{"system":%q,"code":%q}]},"system":%q,"value":%q%s}`, system, code, idSystem, value, extra)
}

const (
	v2   = "http://terminology.hl7.org/CodeSystem/v2-0203"
	c4bb = "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBIdentifierType"
)

// TestMemberIdentifierFindsTheMember holds the rule that the
// MemberIdentifier $member-match answers with finds the member, and only
// the member, with Patient?identifier=<value> (the value alone): the next
// step of Inferno's PDex payer-server suite ("Server member identifier from
// $member-match yields logical Patient id", PDex 2.0.0 requirement 35),
// which searches by identifier.value only. The rows try each step of the
// documented choice (mdm.MemberMatch.memberIdentifier).
func TestMemberIdentifierFindsTheMember(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("L", 604)
	cases := []struct {
		name   string
		cfg    mdm.MemberMatchConfig
		member string
		others []string
		// wantSystem|wantValue is the identifier answered; "" values:
		// any (the row is about searchability alone). added: the member
		// was given it.
		wantSystem, wantValue string
		added                 bool
	}{
		{name: "no identifier at all: one is added (the issue's example)",
			member:     matchedPatient(),
			wantSystem: "{base}/Patient", wantValue: "pat-a", added: true},
		{name: "a Member Number (the PDex example member)",
			member:     patricia,
			wantSystem: "http://example.org/old-payer/identifiers/member", wantValue: "M-1001"},
		{name: "a Member Number comes before a unique member id listed first",
			member:     matchedPatient(typed(c4bb, "um", "urn:payer:um", "U-1"), typed(v2, "MB", "urn:payer:mb", "MB-1")),
			wantSystem: "urn:payer:mb", wantValue: "MB-1"},
		{name: "a unique member id (hrex-temp UMB)",
			member:     matchedPatient(typed(v2, "MR", "urn:payer:mrn", "MR-1"), typed(mdm.HRexTempSystem, "UMB", "urn:payer:umb", "UMB-1")),
			wantSystem: "urn:payer:umb", wantValue: "UMB-1"},
		{name: "a unique member id (CARIN BB um)",
			member:     matchedPatient(typed(v2, "MR", "urn:payer:mrn", "MR-1"), typed(c4bb, "um", "urn:payer:um", "U-1")),
			wantSystem: "urn:payer:um", wantValue: "U-1"},
		{name: "the configured member id system, untyped, before other identifiers",
			cfg:        mdm.MemberMatchConfig{MemberIdentifierSystem: "urn:payer:member"},
			member:     matchedPatient(typed(v2, "MR", "urn:payer:mrn", "MR-1"), `{"system":"urn:payer:member","value":"555"}`),
			wantSystem: "urn:payer:member", wantValue: "555"},
		{name: "without a member id, another identifier",
			member:     matchedPatient(`{"system":"urn:payer:mrn","value":"MR-9"}`),
			wantSystem: "urn:payer:mrn", wantValue: "MR-9"},
		{name: "a Member Number shared with another Patient is passed over",
			member:     matchedPatient(typed(v2, "MB", "urn:payer:mb", "SHARED-1"), `{"system":"urn:payer:mrn","value":"MR-2"}`),
			others:     []string{other("olga", `{"system":"urn:elsewhere","value":"SHARED-1"}`)},
			wantSystem: "urn:payer:mrn", wantValue: "MR-2"},
		{name: "a Member Number with a | (read as system|value) is passed over",
			member:     matchedPatient(typed(v2, "MB", "urn:payer:mb", "A|B"), `{"system":"urn:payer:mrn","value":"MR-3"}`),
			wantSystem: "urn:payer:mrn", wantValue: "MR-3"},
		{name: "a Member Number with a comma (read as two values) is passed over",
			member:     matchedPatient(typed(v2, "MB", "urn:payer:mb", "A,B"), `{"system":"urn:payer:mrn","value":"MR-4"}`),
			others:     []string{other("olga", `{"system":"urn:elsewhere","value":"A"}`)},
			wantSystem: "urn:payer:mrn", wantValue: "MR-4"},
		{name: "a Member Number no longer in use (use old) is passed over",
			member:     matchedPatient(typed(v2, "MB", "urn:payer:mb", "OLD-1", `"use":"old"`), typed(c4bb, "um", "urn:payer:um", "U-2")),
			wantSystem: "urn:payer:um", wantValue: "U-2"},
		{name: "a Member Number whose period has ended is passed over",
			member:     matchedPatient(typed(v2, "MB", "urn:payer:mb", "ENDED-1", `"period":{"end":"2020-12-31"}`), typed(c4bb, "um", "urn:payer:um", "U-3")),
			wantSystem: "urn:payer:um", wantValue: "U-3"},
		{name: "another payer's Member Number (added under -mdm-identifier-system) is never answered",
			cfg:        mdm.MemberMatchConfig{SourcePayerSystem: "urn:old-payer:member"},
			member:     matchedPatient(typed(v2, "MB", "urn:old-payer:member", "THEIRS-1")),
			wantSystem: "{base}/Patient", wantValue: "pat-a", added: true},
		{name: "only unsearchable identifiers: one is added under the configured system",
			cfg:        mdm.MemberMatchConfig{MemberIdentifierSystem: "urn:payer:member"},
			member:     matchedPatient(typed(v2, "MB", "urn:payer:mb", "X|Y")),
			wantSystem: "urn:payer:member", wantValue: "pat-a", added: true},
		{name: "an identifier with a system and no value is no candidate",
			member:     matchedPatient(`{"system":"urn:payer:mb","type":{"coding":[{"system":"` + v2 + `","code":"MB"}]}}`),
			wantSystem: "{base}/Patient", wantValue: "pat-a", added: true},
		{name: "the Patient's id is another Patient's identifier: a new value is added",
			member:     matchedPatient(),
			others:     []string{other("olga", `{"system":"urn:elsewhere","value":"pat-a"}`)},
			wantSystem: "{base}/Patient", added: true},
		{name: "a Member Number differing from another's only in case",
			member: matchedPatient(typed(v2, "MB", "urn:payer:mb", "CASE-1")),
			others: []string{other("olga", `{"system":"urn:elsewhere","value":"case-1"}`)}},
		{name: "a very long Member Number (604 characters)",
			member:     matchedPatient(typed(v2, "MB", "urn:payer:mb", long)),
			wantSystem: "urn:payer:mb", wantValue: long},
		{name: "under HRex 1.1.0 the same choice",
			cfg:        mdm.MemberMatchConfig{HRexVersion: mdm.HRex110},
			member:     matchedPatient(`{"system":"urn:payer:mrn","value":"MR-5"}`),
			wantSystem: "urn:payer:mrn", wantValue: "MR-5"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newMatchEnvWith(t, exampleDay, nil, c.cfg)
			e.load(append([]string{c.member, patriciaCoverage}, c.others...)...)
			before := e.call("GET", "/Patient/pat-a", "")
			req := pdexRequest(t, func(r map[string]map[string]any) { delete(r["MemberPatient"], "identifier") })
			r := e.call("POST", "/Patient/$member-match", req)
			if r.status != 200 {
				t.Fatalf("member-match: %d %s", r.status, r.body)
			}
			ident := memberIdentifier(t, r.json)
			sys, _ := ident["system"].(string)
			value, _ := ident["value"].(string)
			wantSystem := strings.ReplaceAll(c.wantSystem, "{base}", e.base)
			if c.wantSystem != "" && sys != wantSystem {
				t.Errorf("system %q, want %q", sys, wantSystem)
			}
			if c.wantValue != "" && value != c.wantValue {
				t.Errorf("value %q, want %q", value, c.wantValue)
			}
			if c.added && value == "pat-a" != (c.wantValue == "pat-a") {
				t.Errorf("added value %q", value)
			}

			// The rule itself: the value alone finds the member, and no one else.
			found := e.call("GET", "/Patient?identifier="+url.QueryEscape(value), "")
			var ids []string
			for _, p := range entries(found.json) {
				ids = append(ids, p["id"].(string))
			}
			if found.status != 200 || !slices.Equal(ids, []string{"pat-a"}) {
				t.Fatalf("Patient?identifier=%s: %d %v, want the member alone", value, found.status, ids)
			}

			// Given an identifier, the member keeps it, typed MB; else the
			// Patient is not touched.
			after := e.call("GET", "/Patient/pat-a", "")
			changed := after.json["meta"].(map[string]any)["versionId"] != before.json["meta"].(map[string]any)["versionId"]
			// (A row that wants any searchable answer may get either.)
			if anyAnswer := c.wantSystem == "" && c.wantValue == ""; changed != c.added && !anyAnswer {
				t.Errorf("Patient changed %v, want %v: %s", changed, c.added, after.body)
			}
			if changed && !strings.Contains(string(after.body), `"code":"MB"`) {
				t.Errorf("added identifier untyped: %s", after.body)
			}
			// Matched again, the same answer, nothing more added.
			again := e.call("POST", "/Patient/$member-match", req)
			if a := memberIdentifier(t, again.json); a["value"] != value || a["system"] != ident["system"] {
				t.Errorf("second match answered %v, first %v", a, ident)
			}
			if v := e.call("GET", "/Patient/pat-a", "").json["meta"].(map[string]any)["versionId"]; v != after.json["meta"].(map[string]any)["versionId"] {
				t.Errorf("second match wrote the Patient again (version %v)", v)
			}
		})
	}
}

func memberIdentifier(t *testing.T, params map[string]any) map[string]any {
	t.Helper()
	list, _ := params["parameter"].([]any)
	for _, raw := range list {
		p := raw.(map[string]any)
		if p["name"] == "MemberIdentifier" {
			return p["valueIdentifier"].(map[string]any)
		}
	}
	t.Fatalf("no MemberIdentifier: %v", params)
	return nil
}

// TestMemberMatchAnswerFollowsHRexProfile checks the answer against the
// output profile of the HRex version configured, read from its
// StructureDefinition (testdata/hrex): by default HRex 1.0.0's, which the
// PDex 2.0.0 payer-server suite validates against ("Server $member-match
// response conforms to profile"): closed slicing, one parameter,
// MemberIdentifier typed MB. HRex 1.1.0 (FHIR-42810) allows MemberId too,
// and types MemberIdentifier UMB (FHIR-44933).
func TestMemberMatchAnswerFollowsHRexProfile(t *testing.T) {
	t.Parallel()
	profiles := map[string]*profile{
		mdm.HRex100: readProfile(t, "StructureDefinition-hrex-parameters-member-match-out-1.0.0.json"),
		mdm.HRex110: readProfile(t, "StructureDefinition-hrex-parameters-member-match-out-1.1.0.json"),
	}
	answers := map[string]map[string]any{}
	for _, c := range []struct {
		version, profile string
		names            []string
	}{
		{"", mdm.HRex100, []string{"MemberIdentifier"}},
		{mdm.HRex100, mdm.HRex100, []string{"MemberIdentifier"}},
		{mdm.HRex110, mdm.HRex110, []string{"MemberIdentifier", "MemberId"}},
	} {
		e := newMatchEnvWith(t, exampleDay, nil, mdm.MemberMatchConfig{HRexVersion: c.version})
		e.load(patricia, patriciaCoverage)
		r := e.call("POST", "/Patient/$member-match", pdexRequest(t, nil))
		if r.status != 200 {
			t.Fatalf("%q: %d %s", c.version, r.status, r.body)
		}
		if problems := profiles[c.profile].check(r.json); len(problems) > 0 {
			t.Errorf("HRex %q answer %s breaks the %s profile: %v", c.version, r.body, c.profile, problems)
		}
		var names []string
		for _, p := range r.json["parameter"].([]any) {
			names = append(names, p.(map[string]any)["name"].(string))
		}
		if !slices.Equal(names, c.names) {
			t.Errorf("HRex %q: parameters %v, want %v", c.version, names, c.names)
		}
		if issues := spec.R4().Validate(r.json); len(issues) > 0 {
			t.Errorf("HRex %q: not valid FHIR R4: %v", c.version, issues)
		}
		answers[c.profile] = r.json
	}
	if id := answers[mdm.HRex110]["parameter"].([]any)[1].(map[string]any)["valueReference"].(map[string]any); id["reference"] != "Patient/pat-a" {
		t.Errorf("MemberId %v", id)
	}
	// The profiles tell the versions apart, so the checks above can fail:
	// the 1.1.0 answer breaks 1.0.0 (a second parameter, type UMB), and
	// the answer this server used to give (MemberIdentifier and MemberId,
	// typed MB) breaks both.
	if problems := profiles[mdm.HRex100].check(answers[mdm.HRex110]); len(problems) < 2 {
		t.Errorf("the 1.1.0 answer passes the 1.0.0 profile: %v", problems)
	}
	var former map[string]any
	_ = json.Unmarshal([]byte(`{"resourceType":"Parameters","parameter":[
		{"name":"MemberIdentifier","valueIdentifier":{"type":{"coding":[{"system":"`+v2+`","code":"MB"}]},"system":"urn:x","value":"M-1"}},
		{"name":"MemberId","valueReference":{"reference":"Patient/pat-a"}}]}`), &former)
	for v, p := range profiles {
		if problems := p.check(former); len(problems) == 0 {
			t.Errorf("the former answer passes the %s profile", v)
		}
	}
	e := newMatchEnv(t, exampleDay, nil)
	if _, err := mdm.NewMemberMatch(e.fhir, mdm.MemberMatchConfig{HRexVersion: "2.0.0"}); err == nil {
		t.Error("an unknown HRex version accepted")
	}
}

// profile is what the member-match-out StructureDefinitions' differentials
// say of Parameters.parameter: how many, sliced (closed) by name, each
// slice's cardinality, value type, and fixed pattern of an Identifier's
// type.
type profile struct {
	max, min int
	closed   bool
	slices   map[string]*slice
}

type slice struct {
	min, max    int
	valueType   string // "Identifier", "Reference"
	typePattern []any  // codings an Identifier's type must hold
	valueMin    bool   // Identifier.value required
	rest        bool   // hrex-reference-rest: Reference.reference required
}

func readProfile(t *testing.T, file string) *profile {
	t.Helper()
	raw, err := os.ReadFile(td.Path("hrex", file))
	if err != nil {
		t.Fatal(err)
	}
	var sd struct {
		Differential struct {
			Element []struct {
				ID        string `json:"id"`
				SliceName string `json:"sliceName"`
				Slicing   *struct {
					Rules string `json:"rules"`
				} `json:"slicing"`
				Min         *int   `json:"min"`
				Max         string `json:"max"`
				FixedString string `json:"fixedString"`
				Type        []struct {
					Code    string   `json:"code"`
					Profile []string `json:"profile"`
				} `json:"type"`
				Pattern map[string]any `json:"patternCodeableConcept"`
			} `json:"element"`
		} `json:"differential"`
	}
	if err := json.Unmarshal(raw, &sd); err != nil {
		t.Fatal(err)
	}
	card := func(s string) int {
		if s == "*" || s == "" {
			return 1 << 30
		}
		var n int
		fmt.Sscan(s, &n)
		return n
	}
	p := &profile{max: 1 << 30, slices: map[string]*slice{}}
	bySlice := map[string]*slice{}
	for _, el := range sd.Differential.Element {
		head, rest, _ := strings.Cut(strings.TrimPrefix(el.ID, "Parameters.parameter"), ".")
		name := strings.TrimPrefix(head, ":")
		switch {
		case el.ID == "Parameters.parameter":
			p.closed = el.Slicing != nil && el.Slicing.Rules == "closed"
			p.max = card(el.Max)
			if el.Min != nil {
				p.min = *el.Min
			}
		case el.SliceName != "":
			s := &slice{max: card(el.Max)}
			if el.Min != nil {
				s.min = *el.Min
			}
			bySlice[name] = s
		case rest == "name":
			p.slices[el.FixedString] = bySlice[name]
		case rest == "valueIdentifier" || rest == "valueReference":
			bySlice[name].valueType = el.Type[0].Code
			bySlice[name].rest = slices.Contains(el.Type[0].Profile, "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition/hrex-reference-rest")
		case rest == "valueIdentifier.type":
			bySlice[name].typePattern, _ = el.Pattern["coding"].([]any)
		case rest == "valueIdentifier.value":
			bySlice[name].valueMin = el.Min != nil && *el.Min > 0
		}
	}
	if len(p.slices) == 0 || !p.closed {
		t.Fatalf("%s: not read as a closed slicing (%+v)", file, p)
	}
	return p
}

// check lists how params breaks the profile.
func (p *profile) check(params map[string]any) []string {
	var out []string
	list, _ := params["parameter"].([]any)
	if len(list) > p.max || len(list) < p.min {
		out = append(out, fmt.Sprintf("%d parameters, the profile allows %d..%d", len(list), p.min, p.max))
	}
	count := map[string]int{}
	for _, raw := range list {
		prm, _ := raw.(map[string]any)
		name, _ := prm["name"].(string)
		s := p.slices[name]
		if s == nil {
			if p.closed {
				out = append(out, fmt.Sprintf("parameter %q is not in the closed slicing", name))
			}
			continue
		}
		count[name]++
		v, _ := prm["value"+s.valueType].(map[string]any)
		if v == nil {
			out = append(out, fmt.Sprintf("%s lacks value%s", name, s.valueType))
			continue
		}
		if s.valueMin && v["value"] == nil {
			out = append(out, name+" lacks its value")
		}
		if s.rest && v["reference"] == nil {
			out = append(out, name+" is not a RESTful reference")
		}
		typ, _ := v["type"].(map[string]any)
		have, _ := typ["coding"].([]any)
		for _, want := range s.typePattern {
			w := want.(map[string]any)
			if !slices.ContainsFunc(have, func(h any) bool {
				hm, _ := h.(map[string]any)
				return hm["system"] == w["system"] && hm["code"] == w["code"]
			}) {
				out = append(out, fmt.Sprintf("%s type lacks %v|%v", name, w["system"], w["code"]))
			}
		}
	}
	for name, s := range p.slices {
		if count[name] < s.min || count[name] > s.max {
			out = append(out, fmt.Sprintf("%d %s, the profile allows %d..%d", count[name], name, s.min, s.max))
		}
	}
	return out
}
