package fhirpath

import (
	"bytes"
	"encoding/json"
	"fmt"
	td "github.com/p2pserver/p2pserver/internal/testdata"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/spec"
)

var testdata = td.Dir

func decode(t testing.TB, b []byte) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v map[string]any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode: %v", err)
	}
	return v
}

func example(t testing.TB, name string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata, name))
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, b)
}

// syntheaEntry returns the first entry resource of type typ in a Synthea
// bundle.
func syntheaEntry(t testing.TB, typ string) map[string]any {
	t.Helper()
	bundle := example(t, "synthea/Angelic_Mueller_29d755a6-32fa-482e-8fdd-081300209df8.json")
	for _, e := range bundle["entry"].([]any) {
		res := e.(map[string]any)["resource"].(map[string]any)
		if res["resourceType"] == typ {
			return res
		}
	}
	t.Fatalf("no %s in the Synthea bundle", typ)
	return nil
}

// summary writes a result as "type:value" for primitives and "Type" for
// complex values.
func summary(nodes []Node) []string {
	out := []string{}
	for _, n := range nodes {
		switch v := n.Value.(type) {
		case map[string]any:
			out = append(out, n.Type)
		default:
			out = append(out, fmt.Sprintf("%s:%v", n.Type, v))
		}
	}
	return out
}

func TestCompileEverySearchParameterExpression(t *testing.T) {
	t.Parallel()
	n := 0
	for _, sp := range append(spec.SearchParams(), spec.USCoreSearchParams()...) {
		exprs := []string{sp.Expression}
		for _, c := range sp.Components {
			exprs = append(exprs, c.Expression)
		}
		for _, expr := range exprs {
			if expr == "" {
				continue
			}
			n++
			if _, err := Compile(expr); err != nil {
				t.Errorf("%s: %v", sp.URL, err)
			}
		}
	}
	if n < 1400 {
		t.Errorf("compiled only %d expressions", n)
	}
}

func TestCompileRejectsUnsupportedSyntax(t *testing.T) {
	t.Parallel()
	for _, expr := range []string{
		"",
		"Patient.name.count()",
		"Patient.name.select(given)",
		"Observation.value > 5",
		"Observation.value + 1",
		"-Observation.value",
		"a xor b",
		"a implies b",
		"'a' in Patient.name.given",
		"Patient.name contains 'x'",
		"Patient.name ~ 'x'",
		"Patient.name[",
		"Patient.name[Patient.id]",
		"Patient.name.where(use='official'",
		"Patient.name)",
		"Patient..name",
		"Patient.",
		"'unterminated",
		"`unterminated",
		"%ucum",
		"$index",
		"Patient.name // comment",
		"Patient.ofType(123)",
		"Patient.extension(url)",
		"Patient.exists(a, b)",
		"Patient.where()",
		"Patient # name",
		"{}",
		strings.Repeat("(", 200) + "Patient" + strings.Repeat(")", 200),
	} {
		if e, err := Compile(expr); err == nil {
			t.Errorf("Compile(%q) = %v, want an error", expr, e)
		}
	}
}

func TestMustCompilePanicsOnError(t *testing.T) {
	t.Parallel()
	defer func() {
		if recover() == nil {
			t.Error("MustCompile accepted an invalid expression")
		}
	}()
	MustCompile("Patient.name.count()")
}

func TestEvalOnExamples(t *testing.T) {
	t.Parallel()
	m := spec.R4()
	heartRate := example(t, "us-core/heart-rate.json")
	bp := example(t, "us-core/blood-pressure.json")
	evs := example(t, "us-core/Observation-EVS-item-example-89555-7.json")
	condition := example(t, "us-core/condition-duodenal-ulcer-resolved.json")
	encounter := example(t, "us-core/encounter-example-1.json")
	deceased := example(t, "us-core/patient-deceased-example.json")
	infant := example(t, "us-core/patient-infant-example.json")
	practitioner := example(t, "us-core/practitioner-2.json")
	medReq := example(t, "us-core/medicationrequest-contained-oral-axid.json")
	synObs := syntheaEntry(t, "Observation")
	synEnc := syntheaEntry(t, "Encounter")
	synCond := syntheaEntry(t, "Condition")

	const email = "Patient.telecom.where(system='email') | Person.telecom.where(system='email') | Practitioner.telecom.where(system='email') | PractitionerRole.telecom.where(system='email') | RelatedPerson.telecom.where(system='email')"
	tests := []struct {
		name string
		res  map[string]any
		expr string
		want []string
	}{
		{"code is a CodeableConcept", heartRate, "Observation.code", []string{"CodeableConcept"}},
		{"choice element by its base name", heartRate, "Observation.effective", []string{"dateTime:1999-07-02"}},
		{"as on a choice, in parentheses", heartRate, "(Observation.effective as dateTime)", []string{"dateTime:1999-07-02"}},
		{"as filters out other types", heartRate, "(Observation.effective as Period)", []string{}},
		{"value as Quantity", heartRate, "Observation.value as Quantity", []string{"Quantity"}},
		{"ofType on a choice", heartRate, "Observation.value.ofType(Quantity)", []string{"Quantity"}},
		{"decimal inside a Quantity", heartRate, "Observation.value.ofType(Quantity).value", []string{"decimal:44"}},
		{"string value of a choice", evs, "(Observation.value.ofType(string)) | (Observation.value.ofType(CodeableConcept)).text", []string{"string:3"}},
		{"concrete choice name", evs, "Observation.valueString", []string{"string:3"}},
		{"component values flatten", bp, "Observation.component.value.ofType(Quantity)", []string{"Quantity", "Quantity"}},
		{"component codes", bp, "Observation.component.code.coding.code", []string{"code:8480-6", "code:8462-4"}},
		{"union with the resource itself", bp, "(Observation.value.ofType(Quantity)) | (Observation.component.value.ofType(Quantity))", []string{"Quantity", "Quantity"}},
		{"union drops duplicates", heartRate, "Observation.code | Observation.code", []string{"CodeableConcept"}},
		{"subject that is a Patient", condition, "Condition.subject.where(resolve() is Patient)", []string{"Reference"}},
		{"subject that is not a Group", condition, "Condition.subject.where(resolve() is Group)", []string{}},
		{"onset dateTime", condition, "Condition.onset.ofType(dateTime) | Condition.onset.ofType(Period)", []string{"dateTime:2016-08-10"}},
		{"extension by url in where", condition, "Condition.extension.where(url = 'http://hl7.org/fhir/StructureDefinition/condition-assertedDate').valueDateTime", []string{"dateTime:2016-08-10"}},
		{"extension() function", condition, "Condition.extension('http://hl7.org/fhir/StructureDefinition/condition-assertedDate').value", []string{"dateTime:2016-08-10"}},
		{"period is a Period", encounter, "Encounter.period", []string{"Period"}},
		{"dateTime inside a Period", encounter, "Encounter.period.start", []string{"dateTime:2015-11-01T17:00:14-05:00"}},
		{"backbone element path", encounter, "Encounter.location.location.where(resolve() is Location)", []string{"Reference"}},
		{"name is a HumanName", deceased, "Patient.name", []string{"HumanName"}},
		{"given names flatten", deceased, "Patient.name.given", []string{"string:Mary", "string:A."}},
		{"union applies only the branch of the resource's type", deceased, email, []string{"ContactPoint"}},
		{"the same union on a Practitioner", practitioner, email, []string{"ContactPoint"}},
		{"the same union with no email", infant, email, []string{}},
		{"where on a field", deceased, "Patient.telecom.where(system='phone').value", []string{"string:555-555-5555"}},
		{"deceased dateTime counts as deceased", deceased, "Patient.deceased.exists() and Patient.deceased != false", []string{"boolean:true"}},
		{"no deceased element is not deceased", infant, "Patient.deceased.exists() and Patient.deceased != false", []string{"boolean:false"}},
		{"deceased as dateTime", deceased, "(Patient.deceased.ofType(dateTime))", []string{"dateTime:2022-07-22"}},
		{"US Core race codes", deceased, "Patient.extension.where(url = 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-race').extension.value.code", []string{"code:2106-3", "code:2028-9"}},
		{"Resource paths apply to any resource", deceased, "Resource.id", []string{"id:deceased-example"}},
		{"DomainResource paths apply to any domain resource", condition, "DomainResource.extension.url", []string{"uri:http://hl7.org/fhir/StructureDefinition/condition-assertedDate"}},
		{"DomainResource paths skip a Bundle", example(t, "pdex/Bundle-2000002.json"), "DomainResource.id", []string{}},
		{"a nested resource is typed by its resourceType", example(t, "pdex/Bundle-2000002.json"), "Bundle.entry[0].resource.ofType(Resource).is(DomainResource)", []string{"boolean:true"}},
		{"a path for another type gives nothing", deceased, "Observation.code", []string{}},
		{"relative paths start at the resource", deceased, "name.family | birthDate", []string{"string:Shaw", "date:1937-10-21"}},
		{"%resource", deceased, "%resource.birthDate", []string{"date:1937-10-21"}},
		{"meta.profile is canonical", deceased, "Resource.meta.profile", []string{"canonical:http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|9.0.0"}},
		{"contained reference resolves to the contained resource", medReq, "MedicationRequest.medication.where(resolve() is Medication)", []string{"Reference"}},
		{"medication reference by ofType", medReq, "(MedicationRequest.medication.ofType(Reference))", []string{"Reference"}},
		{"contained resources are typed by their resourceType", medReq, "MedicationRequest.contained", []string{"Medication"}},
		{"exists with a criterion", deceased, "Patient.telecom.exists(system = 'email')", []string{"boolean:true"}},
		{"empty", infant, "Patient.deceased.empty()", []string{"boolean:true"}},
		{"not", infant, "Patient.deceased.exists().not()", []string{"boolean:true"}},
		{"first", deceased, "Patient.name.given.first()", []string{"string:Mary"}},
		{"literal index", deceased, "Patient.telecom[1].system", []string{"code:email"}},
		{"index beyond the end", deceased, "Patient.telecom[5]", []string{}},
		{"or", heartRate, "Observation.status = 'amended' or Observation.status = 'final'", []string{"boolean:true"}},
		{"or of two falsehoods", heartRate, "Observation.status = 'amended' or Observation.status = 'draft'", []string{"boolean:false"}},
		{"and with an unknown operand", heartRate, "Observation.status = 'final' and Observation.bodySite.exists().not().not().where(false)", []string{}},
		{"is as a function", heartRate, "Observation.value.is(Quantity)", []string{"boolean:true"}},
		{"System type name", heartRate, "Observation.effective.ofType(DateTime)", []string{"dateTime:1999-07-02"}},
		{"code is a string", heartRate, "Observation.status is string", []string{"boolean:true"}},
		{"$this in where", deceased, "Patient.name.given.where($this = 'A.')", []string{"string:A."}},
		{"Synthea Observation value", synObs, "Observation.value as Quantity", []string{"Quantity"}},
		{"Synthea Observation effective", synObs, "(Observation.effective as dateTime)", []string{"dateTime:" + synObs["effectiveDateTime"].(string)}},
		{"Synthea Encounter period", synEnc, "Encounter.period", []string{"Period"}},
		{"Synthea Condition onset", synCond, "Condition.onset", []string{"dateTime:" + synCond["onsetDateTime"].(string)}},
		// Synthea's transaction bundles refer by urn:uuid, which names no
		// type; the server rewrites them to Type/id when storing.
		{"urn:uuid reference has no type", synCond, "Condition.subject.where(resolve() is Patient)", []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := summary(MustCompile(tt.expr).Eval(m, tt.res))
			if !slices.Equal(got, tt.want) {
				t.Errorf("%s = %v, want %v", tt.expr, got, tt.want)
			}
			// On a Focus used before by another expression, the same.
			f := NewFocus(m, tt.res)
			MustCompile("name | id | status").EvalFocus(f)
			if got := summary(MustCompile(tt.expr).EvalFocus(f)); !slices.Equal(got, tt.want) {
				t.Errorf("%s on a Focus = %v, want %v", tt.expr, got, tt.want)
			}
		})
	}
}

func TestResolveTypesReferences(t *testing.T) {
	t.Parallel()
	m := spec.R4()
	tests := []struct {
		ref  string
		want string // the type resolve() gives, "" for none
	}{
		{`{"reference":"Patient/123"}`, "Patient"},
		{`{"reference":"http://example.org/fhir/Patient/123"}`, "Patient"},
		{`{"reference":"Patient/123/_history/2"}`, "Patient"},
		{`{"reference":"https://example.org/fhir/Group/7/_history/1"}`, "Group"},
		{`{"reference":"urn:uuid:2ec622d5-095b-44d4-9cb2-c0e7e451cd74","type":"Patient"}`, "Patient"},
		{`{"identifier":{"system":"http://x","value":"1"},"type":"http://hl7.org/fhir/StructureDefinition/Patient"}`, "Patient"},
		{`{"reference":"urn:uuid:2ec622d5-095b-44d4-9cb2-c0e7e451cd74"}`, ""},
		{`{"reference":"Pateint/123"}`, ""},
		{`{"display":"someone"}`, ""},
		{`{"reference":"#p1"}`, "Practitioner"},
		{`{"reference":"#missing"}`, ""},
	}
	for _, tt := range tests {
		res := decode(t, []byte(`{"resourceType":"Observation","status":"final","code":{"text":"x"},
			"contained":[{"resourceType":"Practitioner","id":"p1"}],"subject":`+tt.ref+`}`))
		got := MustCompile("Observation.subject.resolve()").Eval(m, res)
		gotType := ""
		if len(got) == 1 {
			gotType = got[0].Type
		}
		if len(got) > 1 || gotType != tt.want {
			t.Errorf("resolve() of %s = %v, want %q", tt.ref, got, tt.want)
		}
	}
}

func TestEvalOnForCompositeComponents(t *testing.T) {
	t.Parallel()
	m := spec.R4()
	bp := example(t, "us-core/blood-pressure.json")
	code, value := MustCompile("code"), MustCompile("value.ofType(Quantity)")
	var got []string
	for _, comp := range MustCompile("Observation | Observation.component").Eval(m, bp) {
		for _, c := range code.EvalOn(m, bp, comp) {
			coding := c.Value.(map[string]any)["coding"].([]any)[0].(map[string]any)
			for _, v := range value.EvalOn(m, bp, comp) {
				got = append(got, fmt.Sprintf("%s %s=%v", comp.Type, coding["code"], v.Value.(map[string]any)["value"]))
			}
		}
	}
	want := []string{"Observation_Component 8480-6=109", "Observation_Component 8462-4=44"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestEvalWithoutResourceType(t *testing.T) {
	t.Parallel()
	if got := MustCompile("name").Eval(spec.R4(), map[string]any{"name": "x"}); got != nil {
		t.Errorf("got %v for a resource with no resourceType", got)
	}
}

// FuzzCompile checks that no input makes Compile or Eval panic.
func FuzzCompile(f *testing.F) {
	for _, sp := range spec.SearchParams()[:200] {
		f.Add(sp.Expression)
	}
	f.Add("Patient.name.where(given = 'x' and family != 'y' or $this.exists()).first()[0]")
	m := spec.R4()
	b, err := os.ReadFile(filepath.Join(testdata, "us-core/patient-deceased-example.json"))
	if err != nil {
		f.Fatal(err)
	}
	res := decode(f, b)
	f.Fuzz(func(t *testing.T, expr string) {
		e, err := Compile(expr)
		if err != nil {
			return
		}
		e.Eval(m, res)
	})
}

func BenchmarkEval(b *testing.B) {
	m := spec.R4()
	obs := example(b, "us-core/heart-rate.json")
	patient := example(b, "us-core/patient-deceased-example.json")
	cases := []struct {
		name string
		res  map[string]any
		expr string
	}{
		{"path", obs, "Observation.code"},
		{"choice-as", obs, "(Observation.effective as dateTime)"},
		{"where-resolve", obs, "Observation.subject.where(resolve() is Patient)"},
		{"union-of-5-types", patient, "Patient.telecom.where(system='email') | Person.telecom.where(system='email') | Practitioner.telecom.where(system='email') | PractitionerRole.telecom.where(system='email') | RelatedPerson.telecom.where(system='email')"},
		{"uscore-race", patient, "Patient.extension.where(url = 'http://hl7.org/fhir/us/core/StructureDefinition/us-core-race').extension.value.code"},
	}
	for _, c := range cases {
		e := MustCompile(c.expr)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if len(e.Eval(m, c.res)) == 0 {
					b.Fatal("no result")
				}
			}
		})
	}
	// Every R4 parameter that applies to an Observation, over one: what
	// indexing a resource costs.
	var exprs []*Expr
	for _, sp := range spec.SearchParams() {
		if sp.Expression != "" && slices.Contains(sp.Base, "Observation") {
			exprs = append(exprs, MustCompile(sp.Expression))
		}
	}
	b.Run(fmt.Sprintf("all-%d-observation-params", len(exprs)), func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for _, e := range exprs {
				e.Eval(m, obs)
			}
		}
	})
}
