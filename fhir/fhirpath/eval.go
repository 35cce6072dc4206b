package fhirpath

import (
	"cmp"
	"encoding/json"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/p2pserver/p2pserver/fhir/spec"
)

// env is what an evaluation needs besides its input.
type env struct {
	m    *spec.Model
	root Node // the resource: %resource, and where "#id" references resolve
	// focus, when the evaluation is on a Focus, is it: the resource's
	// elements read by one expression are kept for the next (see
	// Focus.elements).
	focus *Focus
}

// node is a compiled expression. eval returns the result for the context
// collection ctx (the resource at the top, an item inside where()).
type node interface {
	eval(e *env, ctx []Node) []Node
}

// input evaluates in, or gives the context when there is none (the first
// term of a path, a function called without a receiver).
func input(e *env, in node, ctx []Node) []Node {
	if in == nil {
		return ctx
	}
	return in.eval(e, ctx)
}

// memberNode is a name in a path. As the first term of a path, a name that
// starts with an upper-case letter is a type: it selects the context if it
// is of that type (Patient.name, Resource.id).
type memberNode struct {
	in   node
	name string
}

func (n *memberNode) eval(e *env, ctx []Node) []Node {
	if n.in == nil && n.name[0] >= 'A' && n.name[0] <= 'Z' {
		if !slices.ContainsFunc(ctx, func(x Node) bool { return !isType(e.m, x.Type, typeName{name: n.name}) }) {
			return ctx // all of it (the resource, at the start of a path): no copy
		}
		var out []Node
		for _, x := range ctx {
			if isType(e.m, x.Type, typeName{name: n.name}) {
				out = append(out, x)
			}
		}
		return out
	}
	items := input(e, n.in, ctx)
	if f := e.focus; f != nil && len(items) == 1 && &items[0] == &f.root[0] {
		return f.element(n.name)
	}
	var out []Node
	for _, x := range items {
		out = child(e.m, out, x, n.name)
	}
	return out
}

// child appends the values of x's element name (or of the concrete elements
// of choice element name) to out.
func child(m *spec.Model, out []Node, x Node, name string) []Node {
	obj, ok := x.Value.(map[string]any)
	if !ok {
		return out
	}
	if el, ok := m.Element(x.Type, name); ok {
		return appendValues(out, obj[name], el.Type)
	}
	choices := m.ChoiceElements(x.Type, name)
	if len(choices) > 8 && len(obj) < len(choices) {
		// Extension.value[x] has 50 types and an extension three members:
		// look the members up among the choices rather than the reverse.
		index := choiceIndex(m, x.Type, name, choices)
		first := len(out)
		for k, v := range obj {
			if i, ok := index[k]; ok {
				out = appendValues(out, v, choices[i].Type)
			}
		}
		if len(out)-first > 1 { // invalid, but keep the result stable
			slices.SortStableFunc(out[first:], func(a, b Node) int { return cmp.Compare(a.Type, b.Type) })
		}
		return out
	}
	for _, el := range choices {
		if v, ok := obj[el.Name]; ok {
			out = appendValues(out, v, el.Type)
		}
	}
	return out
}

type choiceKey struct {
	m         *spec.Model
	typ, base string
}

// choiceIndexes caches, per model, type and choice base, the position of
// each concrete element among the choices. Models are immutable, so
// entries never go stale, and there are a few hundred choices at most.
var choiceIndexes sync.Map // choiceKey -> map[string]int

func choiceIndex(m *spec.Model, typ, base string, choices []spec.Element) map[string]int {
	key := choiceKey{m, typ, base}
	if idx, ok := choiceIndexes.Load(key); ok {
		return idx.(map[string]int)
	}
	idx := make(map[string]int, len(choices))
	for i, el := range choices {
		idx[el.Name] = i
	}
	choiceIndexes.Store(key, idx)
	return idx
}

// appendValues appends a property's value, flattening arrays and leaving
// out nulls. A nested resource is typed by its resourceType.
func appendValues(out []Node, v any, typ string) []Node {
	if arr, ok := v.([]any); ok {
		for _, item := range arr {
			out = appendValues(out, item, typ)
		}
		return out
	}
	if v == nil {
		return out
	}
	if typ == "Resource" {
		rt, _ := v.(map[string]any)["resourceType"].(string)
		if rt == "" {
			return out
		}
		typ = rt
	}
	return append(out, Node{Value: v, Type: typ})
}

type indexNode struct {
	in node
	i  int
}

func (n *indexNode) eval(e *env, ctx []Node) []Node {
	items := input(e, n.in, ctx)
	if n.i < 0 || n.i >= len(items) {
		return nil
	}
	return []Node{items[n.i]}
}

type literalNode struct{ n Node }

func (n *literalNode) eval(*env, []Node) []Node { return []Node{n.n} }

type thisNode struct{}

func (thisNode) eval(_ *env, ctx []Node) []Node { return ctx }

// resourceNode is %resource (and %rootResource, %context): the resource
// the expression is evaluated on.
type resourceNode struct{}

func (resourceNode) eval(e *env, _ []Node) []Node {
	if e.root.Value == nil {
		return nil
	}
	return []Node{e.root}
}

// of types a decoded resource by its resourceType.
func (resourceNode) of(res map[string]any) (Node, bool) {
	rt, ok := res["resourceType"].(string)
	if !ok || rt == "" {
		return Node{}, false
	}
	return Node{Value: res, Type: rt}, true
}

type unionNode struct{ l, r node }

// eval merges both sides, without duplicates, as FHIRPath's | does.
func (n *unionNode) eval(e *env, ctx []Node) []Node {
	l, r := n.l.eval(e, ctx), n.r.eval(e, ctx)
	if len(l) == 0 && len(r) == 0 {
		return nil
	}
	out := make([]Node, 0, len(l)+len(r))
	for _, side := range [][]Node{l, r} {
	next:
		for _, x := range side {
			for _, y := range out {
				if equal(x, y) {
					continue next
				}
			}
			out = append(out, x)
		}
	}
	return out
}

type equalNode struct {
	l, r node
	neg  bool
}

func (n *equalNode) eval(e *env, ctx []Node) []Node {
	l, r := n.l.eval(e, ctx), n.r.eval(e, ctx)
	if len(l) == 0 || len(r) == 0 {
		return nil
	}
	eq := len(l) == len(r)
	for i := 0; eq && i < len(l); i++ {
		eq = equal(l[i], r[i])
	}
	return boolean(eq != n.neg)
}

// equal is FHIRPath equality of two items: same kind and value; values of
// different kinds are not equal.
func equal(a, b Node) bool {
	switch x := a.Value.(type) {
	case string:
		y, ok := b.Value.(string)
		return ok && x == y
	case bool:
		y, ok := b.Value.(bool)
		return ok && x == y
	case json.Number, float64:
		fx, okx := number(x)
		fy, oky := number(b.Value)
		return okx && oky && fx == fy
	case map[string]any:
		y, ok := b.Value.(map[string]any)
		return ok && reflect.DeepEqual(x, y)
	}
	return false
}

func number(v any) (float64, bool) {
	switch x := v.(type) {
	case json.Number:
		f, err := strconv.ParseFloat(x.String(), 64)
		return f, err == nil
	case float64:
		return x, true
	}
	return 0, false
}

// logicNode is and / or, with FHIRPath's three-valued logic (an empty
// operand is unknown).
type logicNode struct {
	l, r node
	or   bool
}

func (n *logicNode) eval(e *env, ctx []Node) []Node {
	l, lok := truth(n.l.eval(e, ctx))
	r, rok := truth(n.r.eval(e, ctx))
	if n.or {
		switch {
		case lok && l || rok && r:
			return boolean(true)
		case lok && rok:
			return boolean(false)
		}
		return nil
	}
	switch {
	case lok && !l || rok && !r:
		return boolean(false)
	case lok && rok:
		return boolean(true)
	}
	return nil
}

// truth evaluates a collection as a Boolean: a single boolean is its
// value, any other single item is true, and an empty (or, here, longer)
// collection is unknown (ok false).
func truth(c []Node) (value, ok bool) {
	if len(c) != 1 {
		return false, false
	}
	if b, isBool := c[0].Value.(bool); isBool {
		return b, true
	}
	return true, true
}

func boolean(b bool) []Node { return []Node{{Value: b, Type: "boolean"}} }

// typeNode is `x is T` (a test) or `x as T` (a filter).
type typeNode struct {
	in     node
	typ    typeName
	filter bool
}

func (n *typeNode) eval(e *env, ctx []Node) []Node {
	return typeOp(e, n.in.eval(e, ctx), n.typ, n.filter)
}

func typeOp(e *env, items []Node, t typeName, filter bool) []Node {
	if filter {
		var out []Node
		for _, x := range items {
			if isType(e.m, x.Type, t) {
				out = append(out, x)
			}
		}
		return out
	}
	if len(items) != 1 {
		return nil
	}
	return boolean(isType(e.m, items[0].Type, t))
}

type funcNode struct {
	in   node
	name string
	args []node
	typ  typeName // ofType, as, is
	url  string   // extension
}

func (n *funcNode) eval(e *env, ctx []Node) []Node {
	items := input(e, n.in, ctx)
	switch n.name {
	case "where":
		return where(e, items, n.args[0])
	case "exists":
		if len(n.args) == 1 {
			items = where(e, items, n.args[0])
		}
		return boolean(len(items) > 0)
	case "empty":
		return boolean(len(items) == 0)
	case "not":
		if b, ok := truth(items); ok {
			return boolean(!b)
		}
		return nil
	case "first":
		if len(items) == 0 {
			return nil
		}
		return items[:1:1]
	case "resolve":
		var out []Node
		for _, x := range items {
			if r, ok := resolve(e, x); ok {
				out = append(out, r)
			}
		}
		return out
	case "ofType", "as":
		return typeOp(e, items, n.typ, true)
	case "is":
		return typeOp(e, items, n.typ, false)
	case "extension":
		var out []Node
		for _, x := range items {
			obj, _ := x.Value.(map[string]any)
			exts, _ := obj["extension"].([]any)
			for _, ext := range exts {
				if em, ok := ext.(map[string]any); ok && em["url"] == n.url {
					out = append(out, Node{Value: em, Type: "Extension"})
				}
			}
		}
		return out
	}
	return nil // unreachable: the parser admits only the functions above
}

func where(e *env, items []Node, cond node) []Node {
	var out []Node
	for _, x := range items {
		if b, ok := truth(cond.eval(e, []Node{x})); ok && b {
			out = append(out, x)
		}
	}
	return out
}

// resolve types the target of a Reference without fetching it: a "#id"
// reference gives the contained resource; otherwise the result is the
// Reference itself, typed by the resource type its reference URL names
// (relative, absolute, or versioned with /_history/), or else by its type
// element.
func resolve(e *env, x Node) (Node, bool) {
	ref, ok := x.Value.(map[string]any)
	if !ok {
		return Node{}, false
	}
	s, _ := ref["reference"].(string)
	if id, local := strings.CutPrefix(s, "#"); local {
		root, _ := e.root.Value.(map[string]any)
		contained, _ := root["contained"].([]any)
		for _, c := range contained {
			cm, _ := c.(map[string]any)
			if cid, _ := cm["id"].(string); cid == id && id != "" {
				return resourceNode{}.of(cm)
			}
		}
		return Node{}, false
	}
	if i := strings.Index(s, "/_history/"); i >= 0 {
		s = s[:i]
	}
	if i := strings.LastIndexByte(s, '/'); i > 0 {
		typ := s[:i]
		typ = typ[strings.LastIndexByte(typ, '/')+1:]
		if e.m.IsResource(typ) {
			return Node{Value: ref, Type: typ}, true
		}
	}
	if t, _ := ref["type"].(string); t != "" {
		// type is a URI: "Patient", or a StructureDefinition URL ending so.
		t = t[strings.LastIndexByte(t, '/')+1:]
		if e.m.IsResource(t) {
			return Node{Value: ref, Type: t}, true
		}
	}
	return Node{}, false
}

// typeName is the type operand of is, as and ofType.
type typeName struct {
	name   string // FHIR type name ("Patient", "dateTime"), or System type name ("String")
	system bool   // a FHIRPath System type: FHIR values of the primitive types that map to it match
}

// systemTypes maps each FHIRPath System type to the FHIR types whose values
// are of that type.
var systemTypes = map[string][]string{
	"Boolean":  {"boolean"},
	"String":   {"string", "code", "id", "markdown", "uri", "url", "canonical", "oid", "uuid", "base64Binary"},
	"Integer":  {"integer", "positiveInt", "unsignedInt"},
	"Decimal":  {"decimal"},
	"Date":     {"date"},
	"DateTime": {"dateTime", "instant"},
	"Time":     {"time"},
}

// parseTypeName reads FHIR.X, System.X or X. An unqualified name is a FHIR
// type unless it is one of the System primitive names, which FHIR does not
// use (R4's Observation-code-value-date writes value.ofType(DateTime)).
func parseTypeName(s string) typeName {
	if name, ok := strings.CutPrefix(s, "FHIR."); ok {
		return typeName{name: name}
	}
	if name, ok := strings.CutPrefix(s, "System."); ok {
		if name == "Quantity" {
			return typeName{name: name}
		}
		return typeName{name: name, system: true}
	}
	if _, ok := systemTypes[s]; ok {
		return typeName{name: s, system: true}
	}
	return typeName{name: s}
}

// parentType gives the base type of the R4 types that specialise another.
var parentType = map[string]string{
	"code": "string", "id": "string", "markdown": "string",
	"url": "uri", "canonical": "uri", "oid": "uri", "uuid": "uri",
	"positiveInt": "integer", "unsignedInt": "integer",
	"Age": "Quantity", "Count": "Quantity", "Distance": "Quantity", "Duration": "Quantity",
	"MoneyQuantity": "Quantity", "SimpleQuantity": "Quantity",
}

// isType reports whether a value of FHIR type have is of type want, taking
// specialisation into account (an Age is a Quantity, a code a string, any
// resource a Resource).
func isType(m *spec.Model, have string, want typeName) bool {
	if have == "" {
		return false
	}
	if want.system {
		for _, t := range systemTypes[want.name] {
			if t == have {
				return true
			}
		}
		return false
	}
	switch want.name {
	case "Resource":
		return m.IsResource(have)
	case "DomainResource":
		return m.IsResource(have) && have != "Bundle" && have != "Binary" && have != "Parameters"
	}
	for t := have; t != ""; t = parentType[t] {
		if t == want.name {
			return true
		}
	}
	return false
}
