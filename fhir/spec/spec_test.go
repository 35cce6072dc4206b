package spec

import (
	"slices"
	"testing"
)

func TestResourceTypesAreTheR4Ones(t *testing.T) {
	t.Parallel()
	types := R4().ResourceTypes()
	if len(types) != 146 {
		t.Fatalf("got %d resource types, want the 146 of R4", len(types))
	}
	if types[0] != "Account" || types[len(types)-1] != "VisionPrescription" {
		t.Errorf("types run from %s to %s, want Account to VisionPrescription", types[0], types[len(types)-1])
	}
	if !slices.IsSorted(types) {
		t.Error("resource types are not sorted")
	}
	for _, name := range []string{"Resource", "DomainResource", "Project", "Bot", "Element", "HumanName", "Patient_Contact"} {
		if slices.Contains(types, name) || R4().IsResource(name) {
			t.Errorf("%s listed as a resource type", name)
		}
	}
	for _, name := range []string{"Patient", "Parameters", "Bundle", "Binary", "OperationOutcome"} {
		if !R4().IsResource(name) {
			t.Errorf("IsResource(%s) = false", name)
		}
	}
	types[0] = "changed"
	if R4().ResourceTypes()[0] != "Account" {
		t.Error("ResourceTypes returned the model's own slice")
	}
}

func TestElementTypes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		typ, name string
		want      Element
	}{
		{"Patient", "birthDate", Element{Name: "birthDate", Type: "date"}},
		{"Patient", "name", Element{Name: "name", Type: "HumanName", Array: true}},
		{"Patient", "contact", Element{Name: "contact", Type: "Patient_Contact", Array: true}},
		{"Patient", "gender", Element{Name: "gender", Type: "code", Enum: []string{"male", "female", "other", "unknown"}}},
		{"Patient", "contained", Element{Name: "contained", Type: "Resource", Array: true}},
		{"Patient", "_birthDate", Element{Name: "_birthDate", Type: "Element"}},
		{"Patient", "deceasedDateTime", Element{Name: "deceasedDateTime", Type: "dateTime"}},
		{"Patient_Contact", "name", Element{Name: "name", Type: "HumanName"}},
		{"Observation", "effectiveDateTime", Element{Name: "effectiveDateTime", Type: "dateTime"}},
		{"Observation", "effectiveInstant", Element{Name: "effectiveInstant", Type: "instant"}},
		{"Observation", "valueQuantity", Element{Name: "valueQuantity", Type: "Quantity"}},
		{"Observation", "subject", Element{Name: "subject", Type: "Reference"}},
		{"Bundle_Entry", "resource", Element{Name: "resource", Type: "Resource"}},
		{"Extension", "valueOid", Element{Name: "valueOid", Type: "oid"}},
		{"Extension", "valueBase64Binary", Element{Name: "valueBase64Binary", Type: "base64Binary"}},
		{"Meta", "profile", Element{Name: "profile", Type: "canonical", Array: true}},
		// The R4 schema forgets the _x of canonical elements; the generator adds it.
		{"QuestionnaireResponse", "_questionnaire", Element{Name: "_questionnaire", Type: "Element"}},
		{"Meta", "_profile", Element{Name: "_profile", Type: "Element", Array: true}},
		{"Narrative", "div", Element{Name: "div", Type: "xhtml"}},
		{"Coding", "code", Element{Name: "code", Type: "code"}},
		{"Reference", "reference", Element{Name: "reference", Type: "string"}},
	}
	for _, tt := range tests {
		got, ok := R4().Element(tt.typ, tt.name)
		if !ok {
			t.Errorf("Element(%s, %s) not found", tt.typ, tt.name)
			continue
		}
		if got.Name != tt.want.Name || got.Type != tt.want.Type || got.Array != tt.want.Array || !slices.Equal(got.Enum, tt.want.Enum) {
			t.Errorf("Element(%s, %s) = %+v, want %+v", tt.typ, tt.name, got, tt.want)
		}
	}
}

func TestElementLeavesOutWhatR4DoesNotHave(t *testing.T) {
	t.Parallel()
	absent := [][2]string{
		{"Patient", "effective"},           // not a property at all
		{"Observation", "effective"},       // a choice base: see ChoiceElements
		{"Meta", "project"},                // added by Medplum, not R4
		{"Reference", "resource"},          // added by Medplum, not R4
		{"OperationOutcome", "status"},     // added by Medplum, not R4
		{"HealthcareService", "offeredIn"}, // R5, not R4
		{"NoSuchType", "id"},
	}
	for _, a := range absent {
		if el, ok := R4().Element(a[0], a[1]); ok {
			t.Errorf("Element(%s, %s) = %+v, want none", a[0], a[1], el)
		}
	}
}

func TestChoiceElements(t *testing.T) {
	t.Parallel()
	tests := []struct {
		typ, base string
		want      []Element
	}{
		{"Observation", "effective", []Element{
			{Name: "effectiveDateTime", Type: "dateTime"},
			{Name: "effectivePeriod", Type: "Period"},
			{Name: "effectiveTiming", Type: "Timing"},
			{Name: "effectiveInstant", Type: "instant"},
		}},
		{"Patient", "deceased", []Element{
			{Name: "deceasedBoolean", Type: "boolean"},
			{Name: "deceasedDateTime", Type: "dateTime"},
		}},
		{"UsageContext", "value", []Element{
			{Name: "valueCodeableConcept", Type: "CodeableConcept"},
			{Name: "valueQuantity", Type: "Quantity"},
			{Name: "valueRange", Type: "Range"},
			{Name: "valueReference", Type: "Reference"},
		}},
		{"MedicationRequest", "medication", []Element{
			{Name: "medicationCodeableConcept", Type: "CodeableConcept"},
			{Name: "medicationReference", Type: "Reference"},
		}},
		// Look like choices by their names, but are separate elements in R4.
		{"Task", "instantiates", nil},
		{"ClinicalImpression_Finding", "item", nil},
		{"PaymentReconciliation", "payment", nil},
		{"Patient", "birth", nil},
		{"Patient", "name", nil},
	}
	for _, tt := range tests {
		got := R4().ChoiceElements(tt.typ, tt.base)
		if !slices.EqualFunc(got, tt.want, func(a, b Element) bool { return a.Name == b.Name && a.Type == b.Type && !a.Array }) {
			t.Errorf("ChoiceElements(%s, %s) = %+v, want %+v", tt.typ, tt.base, got, tt.want)
		}
	}
	if n := len(R4().ChoiceElements("Extension", "value")); n != 50 {
		t.Errorf("Extension.value[x] has %d types, want the 50 of R4", n)
	}
}

func TestSearchParamsAreComplete(t *testing.T) {
	t.Parallel()
	params := SearchParams()
	if len(params) != 1378 {
		t.Fatalf("got %d search parameters, want 1378", len(params))
	}
	byID := map[string]SearchParam{}
	for _, sp := range params {
		if sp.Code == "" || sp.Type == "" || len(sp.Base) == 0 || sp.URL == "" || sp.Name == "" {
			t.Errorf("incomplete parameter %+v", sp)
		}
		byID[sp.ID] = sp
	}
	birthdate := byID["individual-birthdate"]
	if birthdate.Code != "birthdate" || birthdate.Type != "date" || !slices.Contains(birthdate.Base, "Patient") ||
		birthdate.Expression != "Patient.birthDate | Person.birthDate | RelatedPerson.birthDate" ||
		!slices.Contains(birthdate.Comparator, "ge") {
		t.Errorf("individual-birthdate = %+v", birthdate)
	}
	subject := byID["Observation-subject"]
	if subject.Type != "reference" || !slices.Contains(subject.Target, "Patient") || !slices.Contains(subject.Target, "Group") {
		t.Errorf("Observation-subject = %+v", subject)
	}
	combo := byID["Observation-code-value-quantity"]
	if combo.Type != "composite" || len(combo.Components) != 2 ||
		combo.Components[0].Definition != "http://hl7.org/fhir/SearchParameter/clinical-code" ||
		combo.Components[1].Expression != "value.ofType(Quantity)" {
		t.Errorf("Observation-code-value-quantity = %+v", combo)
	}
	if byID["Resource-id"].Expression != "Resource.id" {
		t.Errorf("Resource-id = %+v", byID["Resource-id"])
	}

	params[0].Base[0] = "changed"
	if SearchParams()[0].Base[0] == "changed" {
		t.Error("SearchParams shares its slices with callers")
	}
}

func TestUSCoreSearchParams(t *testing.T) {
	t.Parallel()
	params := USCoreSearchParams()
	if len(params) != 7 {
		t.Fatalf("got %d US Core parameters, want 7", len(params))
	}
	var race *SearchParam
	for i := range params {
		if params[i].Code == "race" {
			race = &params[i]
		}
	}
	if race == nil || race.Type != "token" || !slices.Equal(race.Base, []string{"Patient"}) ||
		race.MultipleOr == nil || !*race.MultipleOr {
		t.Errorf("US Core race = %+v", race)
	}
}

func TestPatientCompartment(t *testing.T) {
	t.Parallel()
	c := PatientCompartment()
	tests := map[string][]string{
		"Observation":          {"subject", "performer"},
		"Patient":              {CompartmentSelf, "link"},
		"AllergyIntolerance":   {"patient", "recorder", "asserter"},
		"ExplanationOfBenefit": {"patient", "payee"},
		"Coverage":             {"policy-holder", "subscriber", "beneficiary", "payor"},
	}
	for typ, want := range tests {
		if !slices.Equal(c[typ], want) {
			t.Errorf("PatientCompartment()[%s] = %v, want %v", typ, c[typ], want)
		}
	}
	for _, outside := range []string{"ActivityDefinition", "Organization", "Practitioner", "Parameters"} {
		if _, ok := c[outside]; ok {
			t.Errorf("%s is in the Patient compartment", outside)
		}
	}
	c["Observation"][0] = "changed"
	if PatientCompartment()["Observation"][0] != "subject" {
		t.Error("PatientCompartment shares its slices with callers")
	}
}

// TestElementFlags checks isSummary and min as the R4 definitions give them
// (FHIR R4 observation.html, patient.html, datatypes.html).
func TestElementFlags(t *testing.T) {
	m := R4()
	cases := []struct {
		typ, name          string
		summary, mandatory bool
	}{
		{"Observation", "status", true, true},
		{"Observation", "_status", true, true},
		{"Observation", "code", true, true},
		{"Observation", "category", false, false},
		{"Observation", "valueQuantity", true, false},
		{"Observation", "text", false, false},
		{"Observation", "id", true, false},
		{"Observation_Component", "code", true, true},
		{"Observation_Component", "interpretation", false, false},
		{"Patient", "contact", false, false},
		{"Patient", "birthDate", true, false},
		{"Patient_Link", "other", true, true},
		{"HumanName", "family", true, false},
		{"HumanName", "extension", false, false},
		{"Extension", "url", false, true},
		{"Narrative", "div", false, true},
		{"Bundle", "type", true, true},
		{"Timing_Repeat", "modifierExtension", true, false},
	}
	for _, c := range cases {
		if got := m.InSummary(c.typ, c.name); got != c.summary {
			t.Errorf("InSummary(%s, %s) = %v", c.typ, c.name, got)
		}
		if got := m.Mandatory(c.typ, c.name); got != c.mandatory {
			t.Errorf("Mandatory(%s, %s) = %v", c.typ, c.name, got)
		}
	}
}
