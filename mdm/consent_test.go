package mdm_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/mdm"
)

func jsonMap(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("%v: %s", err, s)
	}
	return m
}

func TestSensitivityLabels(t *testing.T) {
	t.Parallel()
	sec := func(system, code string) string {
		return `{"resourceType":"Observation","meta":{"security":[{"system":"` + system + `","code":"` + code + `"}]}}`
	}
	cond := func(system, code string) string {
		return `{"resourceType":"Condition","code":{"coding":[{"system":"` + system + `","code":"` + code + `"}]}}`
	}
	for _, c := range []struct {
		name, resource string
		want           []string
	}{
		{"ActCode PSY", sec(mdm.ActCodeSystem, "PSY"), []string{"PSY"}},
		{"ActCode HIV, older system URL", sec("http://hl7.org/fhir/v3/ActCode", "HIV"), []string{"HIV"}},
		{"ActCode SDV by OID", sec("urn:oid:2.16.840.1.113883.5.4", "SDV"), []string{"SDV"}},
		{"restricted", sec(mdm.ConfidentialitySystem, "R"), []string{"R"}},
		{"very restricted", sec(mdm.ConfidentialitySystem, "V"), []string{"V"}},
		{"normal confidentiality is not sensitive", sec(mdm.ConfidentialitySystem, "N"), nil},
		{"an ActCode that is no sensitivity", sec(mdm.ActCodeSystem, "AMB"), nil},
		{"a sensitivity code of another system", sec("urn:other", "PSY"), nil},
		{"ICD-10-CM substance use", cond(mdm.ICD10CMSystem, "F10.20"), []string{"ETH"}},
		{"ICD-10-CM depression", cond(mdm.ICD10CMSystem, "F32.9"), []string{"PSY"}},
		{"ICD-10 HIV disease", cond(mdm.ICD10System, "B20"), []string{"HIV"}},
		{"ICD-10-CM HIV status", cond(mdm.ICD10CMSystem, "z21"), []string{"HIV"}},
		{"ICD-10-CM syphilis", cond(mdm.ICD10CMSystem, "A53.9"), []string{"STD"}},
		{"ICD-10-CM checkup", cond(mdm.ICD10CMSystem, "Z00.00"), nil},
		{"ICD-10-CM hypertension", cond(mdm.ICD10CMSystem, "I10"), nil},
		{"SNOMED is not interpreted", cond("http://snomed.info/sct", "35489007"), nil},
		{"an EOB diagnosis deep inside", `{"resourceType":"ExplanationOfBenefit","diagnosis":[{"sequence":1,"diagnosisCodeableConcept":{"coding":[{"system":"` + mdm.ICD10CMSystem + `","code":"F11.20"}]}}]}`, []string{"ETH"}},
		{"a security label outside meta does not count", `{"resourceType":"Consent","provision":{"provision":[{"type":"deny","securityLabel":[{"system":"` + mdm.ActCodeSystem + `","code":"PSY"}]}]}}`, nil},
		{"labels and codes together", `{"resourceType":"Condition","meta":{"security":[{"system":"` + mdm.ActCodeSystem + `","code":"PSY"},{"system":"` + mdm.ConfidentialitySystem + `","code":"R"}]},"code":{"coding":[{"system":"` + mdm.ICD10CMSystem + `","code":"F32.9"},{"system":"` + mdm.ICD10CMSystem + `","code":"B20"}]}}`, []string{"HIV", "PSY", "R"}},
	} {
		got := mdm.Labels(jsonMap(t, c.resource))
		if !slices.Equal(got, c.want) && !(len(got) == 0 && len(c.want) == 0) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// consentStore is a bare store for policy tests.
func consentStore(t *testing.T) *store.Store {
	t.Helper()
	db, err := store.OpenDB(context.Background(), storetest.DSN(t), store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(db, search.NewRegistry(spec.R4()), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		st.Close()
		db.Close()
	})
	return st
}

func writeDocs(t *testing.T, st *store.Store, docs ...string) {
	t.Helper()
	err := st.Write(context.Background(), func(tx *store.Tx) error {
		for _, d := range docs {
			m := jsonMap(t, d)
			if _, err := tx.Put(&store.Doc{Type: m["resourceType"].(string), ID: m["id"].(string), Map: m, JSON: []byte(d)}, store.PutOptions{}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// consent builds a Consent for Patient/patient; provision is the JSON of
// Consent.provision.
func consent(id, patient, status, policy, provision string) string {
	pol := ""
	if policy != "" {
		pol = `,"policy":[{"uri":"` + policy + `"}]`
	}
	return `{"resourceType":"Consent","id":"` + id + `","status":"` + status + `",
		"scope":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/consentscope","code":"patient-privacy"}]},
		"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"IDSCL"}]}],
		"patient":{"reference":"Patient/` + patient + `"}` + pol + `,"provision":` + provision + `}`
}

func TestConsentPolicy(t *testing.T) {
	t.Parallel()
	st := consentStore(t)
	now := time.Date(2024, 1, 15, 12, 0, 0, 0, time.UTC)
	permit := `{"type":"permit","period":{"start":"2023-12-01","end":"2024-03-31"}}`
	writeDocs(t, st,
		consent("regular", "p-regular", "active", mdm.PolicyRegular, permit),
		consent("sensitive", "p-sensitive", "active", mdm.PolicySensitive, permit),
		consent("draft", "p-draft", "draft", mdm.PolicyRegular, permit),
		consent("past", "p-past", "active", mdm.PolicyRegular, `{"type":"permit","period":{"start":"2022-01-01","end":"2023-12-31"}}`),
		consent("future", "p-future", "active", mdm.PolicyRegular, `{"type":"permit","period":{"start":"2024-02-01"}}`),
		consent("last-day", "p-last-day", "active", mdm.PolicyRegular, `{"type":"permit","period":{"end":"2024-01-15"}}`),
		`{"resourceType":"Consent","id":"treatment","status":"active","scope":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/consentscope","code":"treatment"}]},
		  "category":[{"text":"x"}],"patient":{"reference":"Patient/p-treatment"},"policy":[{"uri":"`+mdm.PolicyRegular+`"}],"provision":{"type":"permit"}}`,
		consent("deny", "p-deny", "active", "", `{"type":"deny"}`),
		consent("labels", "p-labels", "active", mdm.PolicySensitive, `{"type":"permit","provision":[
			{"type":"deny","securityLabel":[{"system":"`+mdm.ActCodeSystem+`","code":"HIV"}],"class":[{"system":"http://hl7.org/fhir/resource-types","code":"DocumentReference"}],
			 "data":[{"meaning":"instance","reference":{"reference":"Observation/secret"}}]},
			{"type":"permit","securityLabel":[{"system":"`+mdm.ActCodeSystem+`","code":"PSY"}]}]}`),
		consent("vague", "p-vague", "active", mdm.PolicySensitive, `{"type":"permit","provision":[{"type":"deny","purpose":[{"system":"x","code":"y"}]}]}`),
		consent("two-a", "p-two", "active", mdm.PolicySensitive, permit),
		consent("two-b", "p-two", "active", mdm.PolicyRegular, permit),
	)
	psy := jsonMap(t, `{"resourceType":"Observation","meta":{"security":[{"system":"`+mdm.ActCodeSystem+`","code":"PSY"}]}}`)
	hiv := jsonMap(t, `{"resourceType":"Condition","code":{"coding":[{"system":"`+mdm.ICD10CMSystem+`","code":"B20"}]}}`)
	plain := jsonMap(t, `{"resourceType":"Observation"}`)
	type check struct {
		typ, id string
		res     map[string]any
		want    bool
	}
	obs := func(id string, res map[string]any, want bool) check { return check{"Observation", id, res, want} }
	for _, c := range []struct {
		patient  string
		consents []string
		checks   []check
	}{
		{"p-none", nil, []check{obs("a", psy, false), obs("b", plain, false)}},
		{"p-regular", []string{"regular"}, []check{obs("a", psy, true), {"Condition", "c", hiv, true}, obs("b", plain, false)}},
		{"p-sensitive", []string{"sensitive"}, []check{obs("a", psy, false), obs("b", plain, false)}},
		{"p-draft", nil, []check{obs("a", psy, false)}},
		{"p-past", nil, []check{obs("a", psy, false)}},
		{"p-future", nil, []check{obs("a", psy, false)}},
		{"p-last-day", []string{"last-day"}, []check{obs("a", psy, true)}},
		{"p-treatment", nil, []check{obs("a", psy, false)}},
		{"p-deny", []string{"deny"}, []check{obs("b", plain, true)}},
		{"p-labels", []string{"labels"}, []check{
			{"Condition", "c", hiv, true}, obs("a", psy, false), obs("secret", plain, true), obs("b", plain, false),
			{"DocumentReference", "d", map[string]any{}, true},
		}},
		{"p-vague", []string{"vague"}, []check{obs("b", plain, true)}},
		{"p-two", []string{"two-a", "two-b"}, []check{obs("a", psy, true), obs("b", plain, false)}},
	} {
		var p *mdm.Policy
		err := st.View(context.Background(), func(tx *store.Tx) error {
			var err error
			p, err = mdm.ConsentPolicy(tx, c.patient, now)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		got := slices.Clone(p.Consents)
		slices.Sort(got)
		if !slices.Equal(got, c.consents) {
			t.Errorf("%s: consents in force %v, want %v", c.patient, got, c.consents)
		}
		withholdsAny := slices.ContainsFunc(c.checks, func(ch check) bool { return ch.want })
		if p.Empty() == withholdsAny {
			t.Errorf("%s: Empty() = %v", c.patient, p.Empty())
		}
		for _, ch := range c.checks {
			if got := p.Withholds(ch.typ, ch.id, ch.res); got != ch.want {
				t.Errorf("%s: withholds %s/%s = %v, want %v", c.patient, ch.typ, ch.id, got, ch.want)
			}
		}
	}
}

func TestWithholdReadsConsentsNow(t *testing.T) {
	t.Parallel()
	st := consentStore(t)
	writeDocs(t, st,
		consent("c1", "m1", "active", mdm.PolicyRegular, `{"type":"permit","period":{"start":"2020-01-01","end":"2999-12-31"}}`),
		`{"resourceType":"Observation","id":"psy","meta":{"security":[{"system":"`+mdm.ActCodeSystem+`","code":"PSY"}]},"status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m1"}}`,
		`{"resourceType":"Observation","id":"plain","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/m1"}}`,
	)
	err := st.View(context.Background(), func(tx *store.Tx) error {
		w, err := mdm.Withhold(tx, "m1")
		if err != nil || w == nil {
			t.Fatalf("Withhold: nil test (%v)", err)
		}
		for id, want := range map[string]bool{"psy": true, "plain": false} {
			v, err := tx.Read("Observation", id)
			if err != nil {
				return err
			}
			if w(v) != want {
				t.Errorf("%s: withheld %v", id, !want)
			}
		}
		if w, _ := mdm.Withhold(tx, "someone-else"); w != nil {
			t.Error("a member without consents has a withhold test")
		}
		if !strings.Contains(mdm.PolicyRegular, "#regular") {
			t.Error("policy URL")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
