package fhirpath

import "github.com/p2pserver/p2pserver/fhir/spec"

// Roots returns the names of the resource's own elements that the
// expression reads: when a resource has none of them (under the name, or,
// for a choice element, under one of its concrete names such as
// valueQuantity for value), the expression gives nothing on it. ok is
// false when that cannot be told (an expression such as
// Patient.exists() or %resource gives something whatever the resource
// holds), and then the expression must be evaluated. The search index
// uses it to skip, per resource, the parameters whose elements are absent.
func (e *Expr) Roots() (names []string, ok bool) {
	r, ok := roots(e.root)
	if !ok || r.whole {
		return nil, false
	}
	return r.names, true
}

// rootSet is what a sub-expression's result depends on: the resource
// itself (whole), or only elements of it (names): empty when none of them
// is present.
type rootSet struct {
	whole bool
	names []string
}

func (r rootSet) union(o rootSet) rootSet {
	if r.whole || o.whole {
		return rootSet{whole: true}
	}
	out := rootSet{names: append([]string(nil), r.names...)}
	for _, n := range o.names {
		dup := false
		for _, have := range out.names {
			dup = dup || have == n
		}
		if !dup {
			out.names = append(out.names, n)
		}
	}
	return out
}

// roots tells what n's result depends on, evaluated with the resource as
// its context; ok is false when n may give something from nothing.
func roots(n node) (rootSet, bool) {
	switch n := n.(type) {
	case *memberNode:
		if n.in == nil {
			if n.name[0] >= 'A' && n.name[0] <= 'Z' {
				return rootSet{whole: true}, true // a type test: the resource or nothing
			}
			return rootSet{names: []string{n.name}}, true
		}
		in, ok := roots(n.in)
		if !ok {
			return rootSet{}, false
		}
		if in.whole {
			// An element of the resource (or of nothing).
			return rootSet{names: []string{n.name}}, true
		}
		return in, true // an element of what came from those elements
	case *indexNode:
		if n.in == nil {
			return rootSet{whole: true}, true
		}
		return roots(n.in)
	case *typeNode:
		// as gives a part of its input, is a boolean of it: both nothing
		// from nothing. On the resource, a member of either reads the
		// resource's elements.
		return roots(n.in)
	case nothingNode:
		return rootSet{}, true // nothing, whatever the resource holds
	case *unionNode:
		l, ok := roots(n.l)
		if !ok {
			return rootSet{}, false
		}
		r, ok := roots(n.r)
		if !ok {
			return rootSet{}, false
		}
		return l.union(r), true
	case *funcNode:
		var in rootSet
		if n.in == nil {
			in = rootSet{whole: true}
		} else {
			var ok bool
			if in, ok = roots(n.in); !ok {
				return rootSet{}, false
			}
		}
		switch n.name {
		case "where", "first", "ofType", "as", "is":
			// A part of the input, or a boolean of it: nothing from
			// nothing, the resource (or nothing) from the resource.
			return in, true
		case "extension":
			if in.whole {
				return rootSet{names: []string{"extension"}}, true
			}
			return in, true
		case "resolve":
			if in.whole {
				return rootSet{}, false // not an element of the resource
			}
			return in, true
		}
		return rootSet{}, false // exists(), empty(), not(): something from nothing
	}
	return rootSet{}, false
}

// ForType returns the expression as evaluated on resources of type typ:
// the branches of its unions that start with a type test such a resource
// fails (the Observation.code of `Condition.code | Observation.code` on a
// Condition) are left out, since they give nothing. On every resource of
// type typ it gives what e gives. The search parameters shared by many
// types (patient, code, date) have a branch per type: the index evaluates
// only the resource's own.
func (e *Expr) ForType(m *spec.Model, typ string) *Expr {
	n, empty := pruneFor(m, typ, e.root)
	if empty {
		n = nothingNode{}
	}
	return &Expr{src: e.src, root: n}
}

// nothingNode is an expression that gives nothing.
type nothingNode struct{}

func (nothingNode) eval(*env, []Node) []Node { return nil }

// pruneFor returns n without the union branches that give nothing on a
// resource of type typ; empty when n itself gives nothing.
func pruneFor(m *spec.Model, typ string, n node) (node, bool) {
	if u, ok := n.(*unionNode); ok {
		l, lEmpty := pruneFor(m, typ, u.l)
		r, rEmpty := pruneFor(m, typ, u.r)
		switch {
		case lEmpty && rEmpty:
			return nil, true
		case lEmpty:
			return r, false
		case rEmpty:
			return l, false
		case l == u.l && r == u.r:
			return u, false
		}
		return &unionNode{l: l, r: r}, false
	}
	return n, failsTypeTest(m, typ, n)
}

// failsTypeTest reports whether n is a path whose first term is a type
// test (Observation in Observation.code) that a resource of type typ
// fails: then the whole path gives nothing.
func failsTypeTest(m *spec.Model, typ string, n node) bool {
	for {
		switch x := n.(type) {
		case *memberNode:
			if x.in == nil {
				return x.name[0] >= 'A' && x.name[0] <= 'Z' && !isType(m, typ, typeName{name: x.name})
			}
			n = x.in
		case *funcNode:
			if x.in == nil {
				return false
			}
			n = x.in
		case *typeNode:
			n = x.in
		case *indexNode:
			if x.in == nil {
				return false
			}
			n = x.in
		default:
			return false
		}
	}
}
