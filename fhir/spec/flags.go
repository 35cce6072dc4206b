package spec

import (
	"strings"
	"sync"
)

// Element flags, from the R4 StructureDefinitions (data/element-flags.json,
// written by gen from ElementDefinition.isSummary and min).
const (
	flagSummary   = 1
	flagMandatory = 2
)

var (
	flagsOnce sync.Once
	flags     map[string]map[string]uint8
)

func elementFlags(typeName, name string) uint8 {
	flagsOnce.Do(func() {
		if err := readData("element-flags.json", &flags); err != nil {
			panic("spec: " + err.Error())
		}
	})
	// A primitive's _x sibling (id and extensions) goes with the primitive.
	name = strings.TrimPrefix(name, "_")
	return flags[typeName][name]
}

// InSummary reports whether property name of type typeName (a resource, a
// data type or a backbone element as Element names them: "Patient_Contact")
// is marked isSummary in the R4 definitions, the elements _summary=true
// returns (FHIR R4 search.html#summary). Choice elements are known by their
// concrete names; a primitive's _x sibling answers as the primitive.
func (m *Model) InSummary(typeName, name string) bool {
	return elementFlags(typeName, name)&flagSummary != 0
}

// Mandatory reports whether property name of type typeName has a minimum
// cardinality of at least 1 in the R4 definitions (the elements _elements
// and _summary=text keep whatever is asked).
func (m *Model) Mandatory(typeName, name string) bool {
	return elementFlags(typeName, name)&flagMandatory != 0
}
