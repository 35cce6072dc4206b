// Package spec holds the FHIR R4 (4.0.1) definitions the server stands on,
// embedded in the binary: a type model compiled from the R4 JSON Schema (for
// structural validation and for typing FHIRPath results), the
// SearchParameter definitions, and the Patient compartment.
//
// The files under data/ are trimmed copies of testdata/fhir-r4, written by
// the generator in gen/ (`make spec`); do not edit them by hand.
package spec

import (
	"embed"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
)

//go:embed data/*.json
var data embed.FS

// Element is one property of a FHIR type as the JSON Schema declares it.
type Element struct {
	Name  string // JSON property name
	Type  string // FHIR type name: a primitive ("string", "code", "dateTime", ...), a complex type ("CodeableConcept", "Reference", ...), "Resource" for a contained or nested resource, "Element" for the _x sibling of a primitive, or the BackboneElement definition name the schema uses ("Patient_Contact")
	Array bool
	Enum  []string // allowed codes, if the schema lists them
}

// Model is the compiled FHIR R4 type model. It is immutable and safe for
// concurrent use.
type Model struct {
	types         map[string]*typeDef
	resourceTypes []string // sorted
}

// typeDef is one schema definition: a resource, a complex type, a backbone
// element or a primitive.
type typeDef struct {
	name     string
	resource bool
	prim     *primitive // primitive types only
	props    map[string]*prop
	required []string             // without resourceType
	reqExt   []string             // "_" + each of required
	choices  map[string][]Element // base name ("value") -> concrete elements
	groups   []choiceGroup        // for the one-of check, sorted by base
}

// choiceGroup is a choice element: its base name and concrete properties.
type choiceGroup struct {
	base  string
	names []string
}

// prop is one property of a typeDef, with everything validation needs
// resolved once.
type prop struct {
	Element
	typ      *typeDef        // complex and backbone types
	prim     *primitive      // primitive-typed properties (not enums)
	enum     map[string]bool // enum-coded properties
	resource bool            // a resource, dispatched on its resourceType
	ext      bool            // the _x sibling of a primitive
	group    uint64          // bit of its choice group in typeDef.groups, 0 if none
	sibling  string          // a primitive array's _x sibling, or an _x array's primitive
}

var (
	r4Once  sync.Once
	r4Model *Model
)

// R4 returns the FHIR R4 model, compiled once from the embedded schema. It
// panics if the embedded data is broken, which the package tests rule out.
func R4() *Model {
	r4Once.Do(func() {
		m, err := load()
		if err != nil {
			panic("spec: " + err.Error())
		}
		r4Model = m
	})
	return r4Model
}

// ResourceTypes returns every concrete R4 resource type ("Account" ..
// "VisionPrescription"), sorted. The slice is the caller's to keep.
func (m *Model) ResourceTypes() []string {
	return slices.Clone(m.resourceTypes)
}

// IsResource reports whether name is a concrete R4 resource type.
func (m *Model) IsResource(name string) bool {
	t := m.types[name]
	return t != nil && t.resource
}

// Element returns property name of type typeName as the schema declares it.
// Choice elements are known by their concrete names ("effectiveDateTime");
// see ChoiceElements for the base name. The Enum slice is shared and must
// not be modified.
func (m *Model) Element(typeName, name string) (Element, bool) {
	t := m.types[typeName]
	if t == nil {
		return Element{}, false
	}
	p := t.props[name]
	if p == nil {
		return Element{}, false
	}
	return p.Element, true
}

// ChoiceElements returns the concrete elements of choice element base[x] of
// typeName in specification order (for Observation "effective":
// effectiveDateTime, effectivePeriod, effectiveTiming, effectiveInstant), or
// nil if typeName has no such choice. The slice is shared and must not be
// modified.
func (m *Model) ChoiceElements(typeName, base string) []Element {
	t := m.types[typeName]
	if t == nil {
		return nil
	}
	return t.choices[base]
}

// The embedded schema, decoded into just what load needs.
type schemaFile struct {
	Definitions map[string]schemaDef `json:"definitions"`
}

type schemaDef struct {
	Properties map[string]schemaProp `json:"properties"`
	Required   []string              `json:"required"`
	Pattern    string                `json:"pattern"`
	Type       string                `json:"type"`
	OneOf      []schemaProp          `json:"oneOf"`
}

type schemaProp struct {
	Ref     string      `json:"$ref"`
	Items   *schemaProp `json:"items"`
	Type    string      `json:"type"`
	Enum    []string    `json:"enum"`
	Const   string      `json:"const"`
	Pattern string      `json:"pattern"`
}

const refPrefix = "#/definitions/"

func load() (*Model, error) {
	var sf schemaFile
	if err := readData("fhir.schema.json", &sf); err != nil {
		return nil, err
	}
	var choiceNames map[string]map[string][]string
	if err := readData("choice-elements.json", &choiceNames); err != nil {
		return nil, err
	}
	m := &Model{types: make(map[string]*typeDef, len(sf.Definitions))}
	regexps := map[string]*regexp.Regexp{}

	// Primitives first: properties point at them.
	var primNames []string
	for name, d := range sf.Definitions {
		if d.Properties != nil || d.OneOf != nil {
			continue
		}
		p, err := newPrimitive(name, d.Type, d.Pattern, regexps)
		if err != nil {
			return nil, err
		}
		m.types[name] = &typeDef{name: name, prim: p}
		primNames = append(primNames, name)
	}
	resourceList, ok := sf.Definitions["ResourceList"]
	if !ok {
		return nil, fmt.Errorf("schema has no ResourceList")
	}
	for _, r := range resourceList.OneOf {
		name := strings.TrimPrefix(r.Ref, refPrefix)
		m.resourceTypes = append(m.resourceTypes, name)
	}
	slices.Sort(m.resourceTypes)
	for name, d := range sf.Definitions {
		if d.Properties == nil {
			continue
		}
		m.types[name] = &typeDef{name: name, props: make(map[string]*prop, len(d.Properties)), required: d.Required}
	}
	for _, name := range m.resourceTypes {
		t := m.types[name]
		if t == nil || t.prim != nil {
			return nil, fmt.Errorf("resource type %s has no definition", name)
		}
		t.resource = true
	}
	for name, d := range sf.Definitions {
		t := m.types[name]
		if d.Properties == nil {
			continue
		}
		for pname, sp := range d.Properties {
			p, err := m.newProp(pname, sp, primNames, regexps)
			if err != nil {
				return nil, fmt.Errorf("%s.%s: %w", name, pname, err)
			}
			t.props[pname] = p
		}
		t.required = slices.DeleteFunc(t.required, func(s string) bool { return s == "resourceType" })
		for _, r := range t.required {
			t.reqExt = append(t.reqExt, "_"+r)
		}
	}
	for typeName, groups := range choiceNames {
		t := m.types[typeName]
		if t == nil {
			return nil, fmt.Errorf("choice elements of unknown type %s", typeName)
		}
		t.choices = make(map[string][]Element, len(groups))
		for base, names := range groups {
			for _, n := range names {
				p := t.props[n]
				if p == nil {
					return nil, fmt.Errorf("choice element %s.%s is not a property", typeName, n)
				}
				t.choices[base] = append(t.choices[base], p.Element)
			}
			t.groups = append(t.groups, choiceGroup{base, names})
		}
		slices.SortFunc(t.groups, func(a, b choiceGroup) int { return strings.Compare(a.base, b.base) })
		if len(t.groups) > 64 {
			return nil, fmt.Errorf("%s has more than 64 choice elements", typeName)
		}
		for i, g := range t.groups {
			for _, n := range g.names {
				t.props[n].group = 1 << i
			}
		}
	}
	return m, nil
}

func (m *Model) newProp(name string, sp schemaProp, primNames []string, regexps map[string]*regexp.Regexp) (*prop, error) {
	p := &prop{Element: Element{Name: name}}
	if sp.Items != nil {
		p.Array = true
		sp = *sp.Items
	}
	switch {
	case sp.Const != "":
		// resourceType: checked by dispatch, never by the property walk.
		p.Type = "code"
	case sp.Enum != nil:
		p.Type = "code"
		p.Enum = sp.Enum
		p.enum = make(map[string]bool, len(sp.Enum))
		for _, e := range sp.Enum {
			p.enum[e] = true
		}
	case sp.Ref != "":
		ref := strings.TrimPrefix(sp.Ref, refPrefix)
		switch {
		case ref == "ResourceList":
			p.Type = "Resource"
			p.resource = true
		case m.types[ref] == nil:
			return nil, fmt.Errorf("reference to unknown type %s", ref)
		case m.types[ref].prim != nil:
			p.Type = ref
			p.prim = m.types[ref].prim
		default:
			p.Type = ref
			p.typ = m.types[ref]
			p.ext = strings.HasPrefix(name, "_") && ref == "Element"
		}
	case sp.Pattern != "" || sp.Type != "":
		// A choice element's primitive member carries its pattern inline;
		// its type is the longest primitive name its name ends with
		// (valueDateTime is a dateTime, not a time).
		typ := ""
		for _, pn := range primNames {
			if strings.HasSuffix(name, strings.ToUpper(pn[:1])+pn[1:]) && len(pn) > len(typ) {
				typ = pn
			}
		}
		if typ == "" {
			return nil, fmt.Errorf("inline primitive of no known type")
		}
		p.Type = typ
		p.prim = m.types[typ].prim
		if sp.Pattern != p.prim.pattern {
			prim, err := newPrimitive(typ, sp.Type, sp.Pattern, regexps)
			if err != nil {
				return nil, err
			}
			p.prim = prim
		}
	default:
		return nil, fmt.Errorf("property of no known shape")
	}
	switch {
	case p.Array && p.ext:
		p.sibling = name[1:]
	case p.Array && (p.prim != nil || p.enum != nil):
		p.sibling = "_" + name
	}
	return p, nil
}

func readData(name string, v any) error {
	b, err := data.ReadFile("data/" + name)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// IsComplex reports whether typeName is a complex type, a resource or a
// backbone element: a type with properties, not a primitive.
func (m *Model) IsComplex(typeName string) bool {
	t := m.types[typeName]
	return t != nil && t.prim == nil && t.props != nil
}
