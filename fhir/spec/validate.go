package spec

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Issue is one structural problem of a resource.
type Issue struct {
	Path    string // FHIRPath-like location, e.g. Patient.name[0].given[1]
	Message string // plain English
}

// String returns "path: message".
func (i Issue) String() string { return i.Path + ": " + i.Message }

// Validate checks a decoded resource (as encoding/json decodes it with
// Decoder.UseNumber, so numbers are json.Number; float64 is accepted too)
// against the R4 JSON Schema and the JSON rules of FHIR:
//
//   - resourceType names a concrete R4 resource type;
//   - every property is one its type declares, including the _x siblings
//     that carry a primitive's id and extensions;
//   - arrays where the type says array, single values where it says single;
//   - primitive values of the right JSON kind, matching their type's pattern
//     (and, for integers, within 32 bits); codes from the listed values;
//   - required properties present (a primitive counts as present when only
//     its _x sibling is, as FHIR allows);
//   - no empty strings, objects or arrays, no null except where FHIR JSON
//     allows it (aligning a primitive array with its _x sibling);
//   - at most one concrete property per choice element (valueString or
//     valueQuantity, not both);
//   - contained resources, Bundle.entry.resource and
//     Parameters.parameter.resource validated by their own resourceType.
//
// It returns every problem found, ordered by path, or nil for a valid
// resource. It does not check profiles, invariants or terminology.
func (m *Model) Validate(resource map[string]any) []Issue {
	issues, _ := m.ValidateN(resource, 0)
	return issues
}

// ValidateN is Validate keeping at most max issues (all when max is 0):
// the first max found, in document order, then ordered by path. more
// counts the problems found beyond them. A body with a problem in every
// one of its million array elements costs a count, not a million
// messages.
func (m *Model) ValidateN(resource map[string]any, max int) (issues []Issue, more int) {
	v := validator{m: m, path: make([]byte, 0, 128), max: max}
	if resource == nil {
		return []Issue{{Path: "resourceType", Message: "no resource"}}, 0
	}
	v.resource(resource, true)
	if len(v.issues) > 1 {
		slices.SortStableFunc(v.issues, func(a, b Issue) int { return strings.Compare(a.Path, b.Path) })
	}
	return v.issues, v.more
}

// validator walks one resource. path holds the location of the value being
// checked; it is turned into a string only when there is an issue to report.
type validator struct {
	m      *Model
	path   []byte
	issues []Issue
	max    int // most issues kept; 0 for all
	more   int // issues found beyond max
}

func (v *validator) report(format string, args ...any) {
	if v.max > 0 && len(v.issues) >= v.max {
		v.more++
		return
	}
	v.issues = append(v.issues, Issue{Path: string(v.path), Message: fmt.Sprintf(format, args...)})
}

// reportAt reports an issue about member name of the value at path.
func (v *validator) reportAt(name, format string, args ...any) {
	n := v.push(name)
	v.report(format, args...)
	v.pop(n)
}

func (v *validator) push(name string) int {
	n := len(v.path)
	if n > 0 {
		v.path = append(v.path, '.')
	}
	v.path = append(v.path, name...)
	return n
}

func (v *validator) pushIndex(i int) int {
	n := len(v.path)
	v.path = append(v.path, '[')
	v.path = strconv.AppendInt(v.path, int64(i), 10)
	v.path = append(v.path, ']')
	return n
}

func (v *validator) pop(n int) { v.path = v.path[:n] }

// resource checks a resource at the current path; at the root the path
// starts with its type name.
func (v *validator) resource(obj map[string]any, root bool) {
	rtv, ok := obj["resourceType"]
	if !ok {
		v.reportAt("resourceType", "missing resourceType")
		return
	}
	rt, ok := rtv.(string)
	if !ok {
		v.reportAt("resourceType", "resourceType must be a string, not %s", kindOf(rtv))
		return
	}
	t := v.m.types[rt]
	if t == nil || !t.resource {
		v.reportAt("resourceType", "unknown resourceType %q", rt)
		return
	}
	if root {
		v.path = append(v.path, rt...)
	}
	v.object(t, obj)
}

// object checks the members of obj, a value of complex type t.
func (v *validator) object(t *typeDef, obj map[string]any) {
	if len(obj) == 0 {
		v.report("empty object: FHIR JSON leaves out elements that have no content")
		return
	}
	var seen, twice uint64 // choice groups met once, and more than once
	for name, val := range obj {
		p := t.props[name]
		if p == nil {
			v.reportAt(name, "unknown property %q for %s", name, typeLabel(t.name))
			continue
		}
		if name == "resourceType" && t.resource {
			continue // checked when dispatching on it
		}
		twice |= seen & p.group
		seen |= p.group
		n := v.push(name)
		v.property(p, val, obj)
		v.pop(n)
	}
	for i, r := range t.required {
		if _, ok := obj[r]; ok {
			continue
		}
		if _, ok := obj[t.reqExt[i]]; ok {
			continue
		}
		v.reportAt(r, "missing required property %q", r)
	}
	if twice != 0 {
		for i, g := range t.groups {
			if twice&(1<<i) == 0 {
				continue
			}
			var present []string
			for _, name := range g.names {
				if _, ok := obj[name]; ok {
					present = append(present, name)
				}
			}
			v.reportAt(g.base, "%s[x] takes one type, but has %s", g.base, strings.Join(present, " and "))
		}
	}
}

// property checks the value of property p; parent is the object holding it
// (a primitive array is checked against its _x sibling there).
func (v *validator) property(p *prop, val any, parent map[string]any) {
	arr, isArr := val.([]any)
	if !p.Array {
		switch {
		case isArr:
			v.report("expected a single %s, not an array", typeLabel(p.Type))
		case val == nil:
			v.report("null is not allowed here; leave the property out instead")
		default:
			v.value(p, val)
		}
		return
	}
	if !isArr {
		v.report("expected an array of %s, not %s", typeLabel(p.Type), kindOf(val))
		return
	}
	if len(arr) == 0 {
		v.report("empty array: FHIR JSON leaves out elements that have no content")
		return
	}
	// Primitive arrays and their _x siblings line up item by item; a null
	// in one marks an item that only the other has.
	var sibling []any
	siblingName := p.sibling
	if siblingName != "" {
		sibling, _ = parent[siblingName].([]any)
		if p.ext && sibling != nil && len(sibling) != len(arr) {
			v.report("has %d items but %s has %d; they must line up", len(arr), siblingName, len(sibling))
		}
	}
	for i, item := range arr {
		n := v.pushIndex(i)
		switch {
		case item == nil:
			if i >= len(sibling) || sibling[i] == nil {
				if p.ext {
					v.report("null with no value at the same index of %s", siblingName)
				} else {
					v.report("null is only allowed where %s has an item at the same index", siblingName)
				}
			}
		default:
			if _, nested := item.([]any); nested {
				v.report("expected %s %s, not an array", article(p.Type), p.Type)
			} else {
				v.value(p, item)
			}
		}
		v.pop(n)
	}
}

// value checks one non-null value of property p.
func (v *validator) value(p *prop, val any) {
	switch {
	case p.resource:
		obj, ok := val.(map[string]any)
		if !ok {
			v.report("expected a resource (a JSON object), not %s", kindOf(val))
			return
		}
		v.resource(obj, false)
	case p.enum != nil:
		s, ok := val.(string)
		switch {
		case !ok:
			v.report("expected a code (a JSON string), not %s", kindOf(val))
		case s == "":
			v.report("empty string: FHIR JSON leaves out elements that have no content")
		case !p.enum[s]:
			v.report("%q is not one of %s", s, strings.Join(p.Enum, ", "))
		}
	case p.prim != nil:
		v.primitive(p.prim, val)
	default:
		obj, ok := val.(map[string]any)
		if !ok {
			v.report("expected %s %s (a JSON object), not %s", article(p.Type), typeLabel(p.Type), kindOf(val))
			return
		}
		v.object(p.typ, obj)
	}
}

func (v *validator) primitive(p *primitive, val any) {
	switch p.kind {
	case kindString:
		s, ok := val.(string)
		switch {
		case !ok:
			v.report("expected %s %s (a JSON string), not %s", article(p.name), p.name, kindOf(val))
		case s == "":
			v.report("empty string: FHIR JSON leaves out elements that have no content")
		case p.match != nil && !p.match(s):
			v.report("%s is not a valid %s", quoteClip(s), p.name)
		}
	case kindNumber:
		var text string
		switch x := val.(type) {
		case json.Number:
			text = x.String()
		case float64:
			text = strconv.FormatFloat(x, 'f', -1, 64)
		case int:
			text = strconv.Itoa(x)
		case int64:
			text = strconv.FormatInt(x, 10)
		default:
			v.report("expected %s %s (a JSON number), not %s", article(p.name), p.name, kindOf(val))
			return
		}
		if msg := p.checkNumber(text); msg != "" {
			v.report("%s", msg)
		}
	case kindBool:
		if _, ok := val.(bool); !ok {
			v.report("expected a boolean (true or false), not %s", kindOf(val))
		}
	}
}

// typeLabel names a type for messages: Patient_Contact is Patient.contact.
func typeLabel(name string) string {
	if !strings.Contains(name, "_") {
		return name
	}
	parts := strings.Split(name, "_")
	for i := 1; i < len(parts); i++ {
		parts[i] = strings.ToLower(parts[i][:1]) + parts[i][1:]
	}
	return strings.Join(parts, ".")
}

// kindOf describes a decoded JSON value for messages.
func kindOf(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		if x == "" {
			return "an empty string"
		}
		return "the string " + quoteClip(x)
	case json.Number:
		return "the number " + x.String()
	case float64:
		return "the number " + strconv.FormatFloat(x, 'g', -1, 64)
	case int, int64:
		return fmt.Sprintf("the number %d", x)
	case bool:
		return fmt.Sprintf("the boolean %t", x)
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("a %T", v)
}

// quoteClip quotes s for a message, shortened if long.
func quoteClip(s string) string {
	const max = 60
	if len(s) > max {
		cut := max
		for cut > 0 && s[cut]&0xC0 == 0x80 {
			cut--
		}
		return strconv.Quote(s[:cut]) + "..."
	}
	return strconv.Quote(s)
}
