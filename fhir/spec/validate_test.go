package spec

import (
	"bytes"
	"encoding/json"
	"fmt"
	td "github.com/p2pserver/p2pserver/internal/testdata"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testdata is the shared folder of outside example resources.
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

func readExample(t testing.TB, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, b)
}

func examples(t testing.TB, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(testdata, dir, "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples in %s: %v", dir, err)
	}
	return files
}

// HL7's own examples (US Core, Da Vinci PDex) and Synthea's generated
// patients are valid R4; the validator must accept every one of them.
func TestValidateAcceptsPublishedExamples(t *testing.T) {
	t.Parallel()
	m := R4()
	for _, dir := range []string{"us-core", "pdex"} {
		for _, f := range examples(t, dir) {
			t.Run(dir+"/"+filepath.Base(f), func(t *testing.T) {
				for _, is := range m.Validate(readExample(t, f)) {
					t.Error(is)
				}
			})
		}
	}
	for _, f := range examples(t, "synthea") {
		t.Run("synthea/"+filepath.Base(f), func(t *testing.T) {
			bundle := readExample(t, f)
			entries, _ := bundle["entry"].([]any)
			if len(entries) == 0 {
				t.Fatal("bundle has no entries")
			}
			for i, e := range entries {
				res, _ := e.(map[string]any)["resource"].(map[string]any)
				for _, is := range m.Validate(res) {
					t.Errorf("entry[%d] (%s/%s): %s", i, res["resourceType"], res["id"], is)
				}
			}
		})
	}
}

func TestValidateReportsStructuralProblems(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		resource string
		want     []Issue // Message is matched as a substring
	}{
		{
			name:     "valid minimal patient",
			resource: `{"resourceType":"Patient","birthDate":"1980-01-01","name":[{"given":["Ann"]}]}`,
		},
		{
			name:     "unknown property",
			resource: `{"resourceType":"Patient","favouriteColour":"blue"}`,
			want:     []Issue{{"Patient.favouriteColour", `unknown property "favouriteColour" for Patient`}},
		},
		{
			name:     "unknown property deep inside",
			resource: `{"resourceType":"Patient","contact":[{"name":{"family":"Doe","nickname":"J"}}]}`,
			want:     []Issue{{"Patient.contact[0].name.nickname", `unknown property "nickname" for HumanName`}},
		},
		{
			name:     "number where a date string is expected",
			resource: `{"resourceType":"Patient","birthDate":19800101}`,
			want:     []Issue{{"Patient.birthDate", "expected a date (a JSON string), not the number 19800101"}},
		},
		{
			name:     "date with month 13",
			resource: `{"resourceType":"Patient","birthDate":"1980-13-01"}`,
			want:     []Issue{{"Patient.birthDate", `"1980-13-01" is not a valid date`}},
		},
		{
			name:     "dateTime with a time but no zone",
			resource: `{"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveDateTime":"2020-01-01T10:00:00"}`,
			want:     []Issue{{"Observation.effectiveDateTime", `"2020-01-01T10:00:00" is not a valid dateTime`}},
		},
		{
			name:     "instant without seconds",
			resource: `{"resourceType":"Patient","meta":{"lastUpdated":"2020-01-01T10:00Z"}}`,
			want:     []Issue{{"Patient.meta.lastUpdated", "is not a valid instant"}},
		},
		{
			name:     "code not in the enum",
			resource: `{"resourceType":"Patient","gender":"mail"}`,
			want:     []Issue{{"Patient.gender", `"mail" is not one of male, female, other, unknown`}},
		},
		{
			name:     "single object where an array is expected",
			resource: `{"resourceType":"Patient","name":{"family":"Doe"}}`,
			want:     []Issue{{"Patient.name", "expected an array of HumanName, not an object"}},
		},
		{
			name:     "array where a single value is expected",
			resource: `{"resourceType":"Patient","birthDate":["1980-01-01"]}`,
			want:     []Issue{{"Patient.birthDate", "expected a single date, not an array"}},
		},
		{
			name:     "empty string",
			resource: `{"resourceType":"Patient","name":[{"given":["Ann",""]}]}`,
			want:     []Issue{{"Patient.name[0].given[1]", "empty string"}},
		},
		{
			name:     "empty object",
			resource: `{"resourceType":"Patient","maritalStatus":{}}`,
			want:     []Issue{{"Patient.maritalStatus", "empty object"}},
		},
		{
			name:     "empty array",
			resource: `{"resourceType":"Patient","identifier":[]}`,
			want:     []Issue{{"Patient.identifier", "empty array"}},
		},
		{
			name:     "null value",
			resource: `{"resourceType":"Patient","active":null}`,
			want:     []Issue{{"Patient.active", "null is not allowed"}},
		},
		{
			name:     "unknown resourceType",
			resource: `{"resourceType":"Patiënt","id":"x"}`,
			want:     []Issue{{"resourceType", `unknown resourceType "Patiënt"`}},
		},
		{
			name:     "abstract resourceType",
			resource: `{"resourceType":"DomainResource"}`,
			want:     []Issue{{"resourceType", `unknown resourceType "DomainResource"`}},
		},
		{
			name:     "no resourceType",
			resource: `{"id":"x"}`,
			want:     []Issue{{"resourceType", "missing resourceType"}},
		},
		{
			name:     "Medplum's meta.project is not R4",
			resource: `{"resourceType":"Patient","meta":{"project":"p1"}}`,
			want:     []Issue{{"Patient.meta.project", `unknown property "project" for Meta`}},
		},
		{
			name:     "contained resource with an unknown property",
			resource: `{"resourceType":"MedicationRequest","status":"active","intent":"order","subject":{"reference":"Patient/1"},"medicationReference":{"reference":"#m"},"contained":[{"resourceType":"Medication","id":"m","colour":"red"}]}`,
			want:     []Issue{{"MedicationRequest.contained[0].colour", `unknown property "colour" for Medication`}},
		},
		{
			name:     "contained resource of an unknown type",
			resource: `{"resourceType":"Patient","contained":[{"resourceType":"Pill","id":"m"}]}`,
			want:     []Issue{{"Patient.contained[0].resourceType", `unknown resourceType "Pill"`}},
		},
		{
			name:     "bad _birthDate content",
			resource: `{"resourceType":"Patient","birthDate":"1980-01-01","_birthDate":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/patient-birthTime","valueDateTime":"1980-01-01T25:00:00Z"}],"value":"x"}}`,
			want: []Issue{
				{"Patient._birthDate.extension[0].valueDateTime", "is not a valid dateTime"},
				{"Patient._birthDate.value", `unknown property "value" for Element`},
			},
		},
		{
			name:     "_birthDate as a string",
			resource: `{"resourceType":"Patient","_birthDate":"1980-01-01"}`,
			want:     []Issue{{"Patient._birthDate", "expected an Element (a JSON object), not the string"}},
		},
		{
			name:     "primitive array lined up with its _x sibling",
			resource: `{"resourceType":"Patient","name":[{"given":["Ann",null],"_given":[null,{"extension":[{"url":"http://example.org/x","valueString":"y"}]}]}]}`,
		},
		{
			name:     "null in a primitive array with nothing in _x",
			resource: `{"resourceType":"Patient","name":[{"given":["Ann",null]}]}`,
			want:     []Issue{{"Patient.name[0].given[1]", "null is only allowed where _given has an item"}},
		},
		{
			name:     "_x sibling of another length",
			resource: `{"resourceType":"Patient","name":[{"given":["Ann","Bo"],"_given":[{"id":"a"}]}]}`,
			want:     []Issue{{"Patient.name[0]._given", "has 1 items but given has 2"}},
		},
		{
			name:     "required property only in its _x sibling counts as present",
			resource: `{"resourceType":"Observation","_status":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason","valueCode":"unknown"}]},"code":{"text":"x"}}`,
		},
		{
			name:     "missing required property",
			resource: `{"resourceType":"Observation","status":"final"}`,
			want:     []Issue{{"Observation.code", `missing required property "code"`}},
		},
		{
			name:     "two types of one choice element",
			resource: `{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueString":"a","valueBoolean":true}`,
			want:     []Issue{{"Observation.value", "value[x] takes one type, but has value"}},
		},
		{
			name:     "integer with a fraction",
			resource: `{"resourceType":"Patient","multipleBirthInteger":2.5}`,
			want:     []Issue{{"Patient.multipleBirthInteger", "2.5 is not a valid integer"}},
		},
		{
			name:     "integer beyond 32 bits",
			resource: `{"resourceType":"Patient","multipleBirthInteger":3000000000}`,
			want:     []Issue{{"Patient.multipleBirthInteger", "out of the range of a 32-bit integer"}},
		},
		{
			name:     "negative unsignedInt",
			resource: `{"resourceType":"Bundle","type":"searchset","total":-5}`,
			want:     []Issue{{"Bundle.total", "-5 is not a valid unsignedInt"}},
		},
		{
			name:     "decimal as a string",
			resource: `{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":"7.2"}}`,
			want:     []Issue{{"Observation.valueQuantity.value", "expected a decimal (a JSON number), not the string"}},
		},
		{
			name:     "boolean as a string",
			resource: `{"resourceType":"Patient","active":"true"}`,
			want:     []Issue{{"Patient.active", "expected a boolean"}},
		},
		{
			name:     "id with a space",
			resource: `{"resourceType":"Patient","id":"a b"}`,
			want:     []Issue{{"Patient.id", `"a b" is not a valid id`}},
		},
		{
			name:     "uri with a space",
			resource: `{"resourceType":"Patient","identifier":[{"system":"http://x y","value":"1"}]}`,
			want:     []Issue{{"Patient.identifier[0].system", "is not a valid uri"}},
		},
		{
			name:     "code with a double space",
			resource: `{"resourceType":"Patient","maritalStatus":{"coding":[{"code":"a  b"}]}}`,
			want:     []Issue{{"Patient.maritalStatus.coding[0].code", "is not a valid code"}},
		},
		{
			name:     "bundle entry resource validated by its own type",
			resource: `{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient","gender":"mail"}},{"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":"Patient/1"}}]}`,
			want: []Issue{
				{"Bundle.entry[0].resource.gender", `"mail" is not one of`},
				{"Bundle.entry[1].resource.subject", "expected a Reference (a JSON object), not the string"},
			},
		},
		{
			name:     "parameters resource validated by its own type",
			resource: `{"resourceType":"Parameters","parameter":[{"name":"MemberPatient","resource":{"resourceType":"Patient","birthDate":"1980-02-30x"}}]}`,
			want:     []Issue{{"Parameters.parameter[0].resource.birthDate", "is not a valid date"}},
		},
		{
			name:     "every problem is reported, not just the first",
			resource: `{"resourceType":"Patient","gender":"mail","birthDate":"1980-13-01","foo":1}`,
			want: []Issue{
				{"Patient.birthDate", "not a valid date"},
				{"Patient.foo", "unknown property"},
				{"Patient.gender", "not one of"},
			},
		},
	}
	m := R4()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := m.Validate(decode(t, []byte(tt.resource)))
			if len(got) != len(tt.want) {
				t.Fatalf("got %d issues %v, want %d %v", len(got), got, len(tt.want), tt.want)
			}
			for i := range got {
				if got[i].Path != tt.want[i].Path || !strings.Contains(got[i].Message, tt.want[i].Message) {
					t.Errorf("issue %d = %q, want %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestValidateAcceptsFloat64Numbers(t *testing.T) {
	t.Parallel()
	var res map[string]any
	if err := json.Unmarshal([]byte(`{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":7.25}}`), &res); err != nil {
		t.Fatal(err)
	}
	if issues := R4().Validate(res); len(issues) != 0 {
		t.Errorf("issues for a float64 decimal: %v", issues)
	}
}

func BenchmarkValidate(b *testing.B) {
	for _, name := range []string{"us-core/patient-deceased-example.json", "us-core/QuestionnaireResponse-PRAPARE-example.json", "synthea/Angelic_Mueller_29d755a6-32fa-482e-8fdd-081300209df8.json"} {
		raw, err := os.ReadFile(filepath.Join(testdata, name))
		if err != nil {
			b.Fatal(err)
		}
		res := decode(b, raw)
		m := R4()
		b.Run(fmt.Sprintf("%s-%dB", strings.TrimSuffix(filepath.Base(name), ".json"), len(raw)), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if issues := m.Validate(res); len(issues) != 0 {
					b.Fatal(issues)
				}
			}
		})
	}
}
