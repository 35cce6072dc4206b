package search

import (
	"slices"
	"sync"

	"github.com/p2pserver/p2pserver/fhir/fhirpath"
)

// plan is how the index entries of one resource type are extracted: its
// parameters in code order, which of them each top-level element of a
// resource calls for, and which are computed from others' entries
// rather than evaluated. A resource is looked at once per element it
// has, not once per parameter per element the parameter reads.
type plan struct {
	params []*Param
	// always are the parameters evaluated on every resource (their
	// elements read are not known).
	always []int
	// byElement gives, for each element a parameter reads (a choice
	// element by every concrete name), the parameters that read it.
	byElement map[string][]int
	// derived are the parameters whose entries are their sources' (see
	// Source), each with the positions of its sources in params.
	derived []derivedParam
	// readings caches, per element name, the parameters that may read
	// it (see reading).
	readings sync.Map // string -> *reading
}

// reading is the parameters of a type that may read one element: those
// reading it and those whose elements read are not known.
type reading struct {
	params []int
	codes  map[string]bool
	// along are the top-level elements params read (the name included);
	// alongKnown is false when one of them reads elements not known.
	along      []string
	alongKnown bool
}

// reading returns the parameters that may read the element name.
func (pl *plan) reading(name string) *reading {
	if rd, ok := pl.readings.Load(name); ok {
		return rd.(*reading)
	}
	rd := &reading{codes: map[string]bool{}, along: []string{name}, alongKnown: true}
	for i, p := range pl.params {
		if p.reads == nil || slices.Contains(p.reads, name) {
			rd.params = append(rd.params, i)
			rd.codes[p.Code] = true
			if p.reads == nil {
				rd.alongKnown = false
			}
			for _, e := range p.reads {
				if !slices.Contains(rd.along, e) {
					rd.along = append(rd.along, e)
				}
			}
		}
	}
	got, _ := pl.readings.LoadOrStore(name, rd)
	return got.(*reading)
}

// derivedParam is a parameter whose entries are taken from its sources'
// entries once those are extracted.
type derivedParam struct {
	at      int
	sources []int
}

// newPlan builds the plan of the parameters of one type (params, sorted
// by code, their Sources found).
func newPlan(params []*Param) *plan {
	pl := &plan{params: params, byElement: map[string][]int{}}
	codes := make(map[string]int, len(params))
	for i, p := range params {
		codes[p.Code] = i
	}
	for i, p := range params {
		if len(p.Sources) > 0 {
			d := derivedParam{at: i}
			for _, s := range p.Sources {
				d.sources = append(d.sources, codes[s.Code])
			}
			pl.derived = append(pl.derived, d)
			continue
		}
		if p.reads == nil {
			pl.always = append(pl.always, i)
			continue
		}
		for _, name := range p.reads {
			if !slices.Contains(pl.byElement[name], i) {
				pl.byElement[name] = append(pl.byElement[name], i)
			}
		}
	}
	return pl
}

// extraction is the state of one resource's extraction: the entries so
// far.
type extraction struct {
	r     *Registry
	res   map[string]any
	focus *fhirpath.Focus // made for the first parameter evaluated
	out   []Entry
	// keys holds the keys of the current parameter's entries once they
	// are too many to compare one by one (see has).
	keys map[string]int
	// keysFrom is where the entries keys holds start in out (-1: none).
	keysFrom int
}

// linearKeys is how many entries of one parameter are compared one by
// one for a duplicate; beyond, a map of their keys is kept (a
// Provenance's target has an entry per resource of a chunk).
const linearKeys = 16

// find returns where among the entries out[start:end] of one parameter
// the one with key is, or -1; keys it is told of with remember.
func (x *extraction) find(start, end int, key string) int {
	if end-start <= linearKeys {
		if j := slices.IndexFunc(x.out[start:end], func(have Entry) bool { return have.Key == key }); j >= 0 {
			return start + j
		}
		return -1
	}
	if x.keysFrom != start {
		clear(x.keys)
		if x.keys == nil {
			x.keys = make(map[string]int, 2*(end-start))
		}
		for i, e := range x.out[start:end] {
			x.keys[e.Key] = start + i
		}
		x.keysFrom = start
	}
	if i, ok := x.keys[key]; ok {
		return i
	}
	return -1
}

// remember records that an entry with key was kept at out[at] among the
// entries of the parameter whose entries start at start.
func (x *extraction) remember(start int, key string, at int) {
	if x.keysFrom == start {
		x.keys[key] = at
	}
}

// eval appends the entries of parameter p (code), without duplicates,
// to x.out and returns where they start.
func (x *extraction) eval(p *Param) int {
	start := len(x.out)
	if x.focus == nil {
		x.focus = fhirpath.NewFocus(x.r.model, x.res)
	}
	for _, n := range p.expr.EvalFocus(x.focus) {
		from := len(x.out)
		x.out = appendEntries(x.out, p, n)
		// Keep the new ones not among the parameter's entries before
		// them; one whose key is there with another payload adds its
		// payload to that entry's (see mergePayload).
		kept := from
		for i := from; i < len(x.out); i++ {
			e := x.out[i]
			if j := x.find(start, kept, e.Key); j >= 0 {
				x.out[j].Payload = mergePayload(e.Key, x.out[j].Payload, e.Payload)
				continue
			}
			e.Param = p.Code
			x.out[kept] = e
			x.remember(start, e.Key, kept)
			kept++
		}
		clear(x.out[kept:])
		x.out = x.out[:kept]
	}
	return start
}

// add appends e under code unless the entries from start on (those of
// the same parameter) have its key already; then its payload is added to
// that entry's (see mergePayload).
func (x *extraction) add(start int, code string, e Entry) {
	if j := x.find(start, len(x.out), e.Key); j >= 0 {
		x.out[j].Payload = mergePayload(e.Key, x.out[j].Payload, e.Payload)
		return
	}
	e.Param = code
	x.out = append(x.out, e)
	x.remember(start, e.Key, len(x.out)-1)
}

// derive appends the entries of the derived parameter d, taken from its
// sources' entries (span gives where each parameter's are in x.out);
// false when a source's entry does not tell whether it is one of d's (a
// reference resolve() types by its type element), and then nothing is
// appended.
func (x *extraction) derive(pl *plan, d derivedParam, span [][2]int32) bool {
	p := pl.params[d.at]
	start := len(x.out)
	for k, at := range d.sources {
		s := p.Sources[k]
		sp := span[at]
		for i := sp[0]; i < sp[1]; i++ {
			e := x.out[i]
			if s.ResolveIs != "" {
				in, decided := x.r.Decides(s, e.Key, e.Payload)
				if !decided {
					clear(x.out[start:])
					x.out = x.out[:start]
					x.keysFrom = -1 // the keys of what was taken back
					return false
				}
				if !in {
					continue
				}
			}
			x.add(start, p.Code, e)
		}
	}
	return true
}
