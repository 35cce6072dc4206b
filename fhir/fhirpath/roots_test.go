package fhirpath

import (
	"slices"
	"testing"
)

// TestRoots: the elements an expression reads, so that a resource
// without them is known to give nothing; expressions that may give
// something from nothing are not known.
func TestRoots(t *testing.T) {
	cases := []struct {
		expr  string
		names []string // nil: not known
	}{
		{"Observation.code", []string{"code"}},
		{"Observation.code.coding", []string{"code"}},
		{"Observation.value as Quantity", []string{"value"}},
		{"(Observation.value as Quantity) | (Observation.component.value as Quantity)", []string{"value", "component"}},
		{"Patient.name | Practitioner.name", []string{"name"}},
		{"Observation.subject.where(resolve() is Patient)", []string{"subject"}},
		{"Observation.component.where(code.coding.code = 'x').value.ofType(Quantity)", []string{"component"}},
		{"Patient.extension('http://example.org/race').value", []string{"extension"}},
		{"Patient.name.first()", []string{"name"}},
		{"Patient.name[0].family", []string{"name"}},
		{"Resource.id", []string{"id"}},
		{"Patient.deceased.exists() and Patient.deceased != false", nil},
		{"Patient.active.not()", nil},
		{"Patient.exists()", nil},
		{"Patient.name.empty()", nil},
		{"%resource", nil},
		{"Patient", nil},
		{"Patient.is(Patient)", nil},
		{"Patient.resolve().name", nil},
		{"Patient.name | Patient.exists()", nil},
	}
	for _, c := range cases {
		e, err := Compile(c.expr)
		if err != nil {
			t.Fatalf("%s: %v", c.expr, err)
		}
		names, ok := e.Roots()
		if c.names == nil {
			if ok {
				t.Errorf("%s: Roots %v, want not known", c.expr, names)
			}
			continue
		}
		if !ok || !slices.Equal(names, c.names) {
			t.Errorf("%s: Roots %v (known %v), want %v", c.expr, names, ok, c.names)
		}
	}
}
