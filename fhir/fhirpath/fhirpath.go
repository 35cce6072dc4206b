// Package fhirpath evaluates the subset of FHIRPath that the R4 search
// parameter definitions use, over a resource decoded from JSON
// (map[string]any, numbers as json.Number), typing every result with the R4
// model so callers know whether they hold a date or a Period, a
// CodeableConcept or an Identifier.
//
// Supported: paths (a leading type name such as Patient selects the
// resource only if it is of that type, so each branch of a union like
// `Patient.telecom | Practitioner.telecom` applies to its own type), choice
// elements by their base name (Observation.value) or concrete name
// (valueQuantity), the | union, = and !=, and, or, `is` and `as` (as
// operators and functions), ofType(), where(), exists(), empty(), not(),
// first(), resolve() (see below), extension(url), a literal [index],
// parentheses, string, number and boolean literals, $this, and %resource.
// Anything else is a compile error, never a panic. A primitive element that
// has only extensions (_birthDate without birthDate) gives no item.
//
// resolve() does not fetch anything: it types a Reference by the resource
// type its reference names ("Patient/1", "http://x/fhir/Patient/1",
// "Patient/1/_history/2") or by its type element, and resolves "#id" to the
// contained resource. It exists so `subject.where(resolve() is Patient)`
// works.
package fhirpath

import (
	"encoding/json"
	"fmt"

	"github.com/p2pserver/p2pserver/fhir/spec"
)

// Node is one item of a result: a JSON value and its FHIR type.
type Node struct {
	Value any    // the JSON value (map[string]any, string, json.Number, bool)
	Type  string // FHIR type name from the spec model ("Reference", "CodeableConcept", "dateTime", "Period", ...); a resource's own type for a resource; "boolean" for the result of a test
}

// Expr is a compiled expression. It is immutable and safe for concurrent
// use.
type Expr struct {
	src  string
	root node
}

// Compile parses expr. It returns an error for syntax outside the
// supported subset.
func Compile(expr string) (*Expr, error) {
	toks, err := lex(expr)
	if err != nil {
		return nil, fmt.Errorf("fhirpath: %q: %w", expr, err)
	}
	p := &parser{toks: toks}
	n, err := p.parseExpr()
	if err == nil && p.peek().kind != tokEOF {
		err = p.errorf(p.peek(), "unexpected %q", p.peek().text)
	}
	if err != nil {
		return nil, fmt.Errorf("fhirpath: %q: %w", expr, err)
	}
	return &Expr{src: expr, root: n}, nil
}

// MustCompile is Compile for expressions known to be valid, such as
// constants; it panics on an error.
func MustCompile(expr string) *Expr {
	e, err := Compile(expr)
	if err != nil {
		panic(err)
	}
	return e
}

// String returns the source of the expression.
func (e *Expr) String() string { return e.src }

// Eval evaluates the expression with resource as its context and returns
// the resulting items, or nil. A resource without a resourceType gives nil.
func (e *Expr) Eval(m *spec.Model, resource map[string]any) []Node {
	root, ok := resourceNode{}.of(resource)
	if !ok {
		return nil
	}
	return e.root.eval(&env{m: m, root: root}, []Node{root})
}

// Focus is a resource ready for several expressions to be evaluated on
// it (EvalFocus): what Eval sets up per call is set up once. It is not
// safe for concurrent use, and must not outlive the resource's changes.
type Focus struct {
	env  env
	root [1]Node
	// elements are the resource's elements read so far, by name: the
	// expressions of many search parameters start with the same one
	// (meta, value[x], code).
	elements []focusElement
}

type focusElement struct {
	name  string
	items []Node
}

// NewFocus prepares resource (decoded from JSON, numbers as json.Number)
// for EvalFocus; a resource without a resourceType gives nothing.
func NewFocus(m *spec.Model, resource map[string]any) *Focus {
	f := &Focus{env: env{m: m}}
	f.env.focus = f
	if root, ok := (resourceNode{}).of(resource); ok {
		f.env.root, f.root[0] = root, root
	}
	return f
}

// element returns the items of the resource's element name (a choice
// element's concrete one), read once per Focus. The slice is shared:
// its capacity ends with it, so an append copies it.
func (f *Focus) element(name string) []Node {
	for _, el := range f.elements {
		if el.name == name {
			return el.items
		}
	}
	items := child(f.env.m, nil, f.root[0], name)
	items = items[:len(items):len(items)]
	f.elements = append(f.elements, focusElement{name, items})
	return items
}

// EvalFocus is Eval on the resource of f.
func (e *Expr) EvalFocus(f *Focus) []Node {
	if f.env.root.Value == nil {
		return nil
	}
	return e.root.eval(&f.env, f.root[:])
}

// EvalOn evaluates the expression with focus as its context, inside
// resource (which %resource and resolve() of "#id" refer to). Composite
// search parameters need it: their components' expressions (code,
// value.ofType(Quantity)) apply to each item the parameter's own
// expression gives.
func (e *Expr) EvalOn(m *spec.Model, resource map[string]any, focus Node) []Node {
	root, _ := resourceNode{}.of(resource)
	return e.root.eval(&env{m: m, root: root}, []Node{focus})
}

// jsonNumber makes a number literal look like the numbers of a decoded
// resource.
func jsonNumber(s string) json.Number { return json.Number(s) }
