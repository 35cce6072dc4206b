// Package search is the FHIR search layer that does not depend on storage:
// the registry of search parameters (loaded from the R4 definitions), the
// extraction of index entries from a resource, and the parsing of a search
// request into clauses whose index key ranges a store can scan.
package search

import (
	"slices"
	"sort"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/fhirpath"
	"github.com/p2pserver/p2pserver/fhir/spec"
)

// Param is one search parameter as it applies to one resource type.
type Param struct {
	Code       string
	Type       string // number, date, string, token, reference, quantity, uri
	URL        string
	Expression string
	Targets    []string // reference targets
	expr       *fhirpath.Expr
	// reads, when set, are the resource's elements the expression reads
	// (choice elements by every concrete name): a resource with none of
	// them has no entry under the parameter (see Extract).
	reads []string
	// Sources, when set, are the parameters whose index entries hold every
	// entry of this one: it has no index of its own (see Source).
	Sources []Source
}

// Source is a parameter whose index another parameter's clauses scan
// instead of their own: the other's entries are exactly the union of its
// sources' entries, each source's entries either all (Observation
// combo-code is code | component-code) or, when ResolveIs is set, those
// whose reference resolves to a resource of that type (Observation patient
// is subject.where(resolve() is Patient)). Such a parameter's entries are
// still extracted and kept with the resource (for matching, sorting,
// _include and :missing); only its index is not stored.
type Source struct {
	Code      string
	ResolveIs string
}

// Stored reports whether p has an index of its own.
func (p *Param) Stored() bool { return len(p.Sources) == 0 }

// Supported parameter types: composite and special parameters are not
// indexed and so not offered.
var supportedTypes = map[string]bool{
	"number": true, "date": true, "string": true, "token": true,
	"reference": true, "quantity": true, "uri": true,
}

// Registry holds the search parameters of every resource type.
type Registry struct {
	model  *spec.Model
	byType map[string]map[string]*Param
	// plans holds how each type's index entries are extracted.
	plans map[string]*plan
	// compartment holds CompartmentParams per type, asked per resource
	// when member access is checked.
	compartment map[string][]*Param
}

// NewRegistry builds the registry from the R4 SearchParameter definitions
// and the US Core ones. A parameter whose expression this server cannot
// evaluate is left out (and so not advertised), never half-supported.
func NewRegistry(m *spec.Model) *Registry {
	r := &Registry{model: m, byType: map[string]map[string]*Param{}}
	add := func(sp spec.SearchParam) {
		if !supportedTypes[sp.Type] || sp.Expression == "" {
			return
		}
		for _, base := range sp.Base {
			types := []string{base}
			if base == "Resource" || base == "DomainResource" {
				types = m.ResourceTypes()
			}
			for _, typ := range types {
				expr := sp.Expression
				if base == "Resource" || base == "DomainResource" {
					expr = strings.ReplaceAll(expr, base+".", typ+".")
				}
				if r.byType[typ] != nil && r.byType[typ][sp.Code] != nil {
					continue // the core definition wins over a profile's
				}
				compiled, err := fhirpath.Compile(expr)
				if err != nil {
					continue
				}
				// Only typ's branches of a parameter shared by many types.
				compiled = compiled.ForType(m, typ)
				if r.byType[typ] == nil {
					r.byType[typ] = map[string]*Param{}
				}
				targets := sp.Target
				if sp.Type == "reference" && len(targets) == 0 {
					targets = nil
				}
				r.byType[typ][sp.Code] = &Param{
					Code: sp.Code, Type: sp.Type, URL: sp.URL, Expression: expr,
					Targets: targets, expr: compiled, reads: elementsRead(m, typ, compiled),
				}
			}
		}
	}
	for _, sp := range spec.SearchParams() {
		add(sp)
	}
	for _, sp := range spec.USCoreSearchParams() {
		add(sp)
	}
	for typ := range r.byType {
		r.findSources(typ)
	}
	r.plans = make(map[string]*plan, len(r.byType))
	for typ := range r.byType {
		r.plans[typ] = newPlan(r.Params(typ))
	}
	r.compartment = map[string][]*Param{}
	for typ, codes := range spec.PatientCompartment() {
		for _, code := range codes {
			if p, ok := r.Lookup(typ, code); ok {
				r.compartment[typ] = append(r.compartment[typ], p)
			}
		}
	}
	return r
}

// findSources sets the Sources of the parameters of typ whose entries are
// all those of other parameters of the same type (see Source), judged on
// the expressions: the branches of the parameter's union (those for typ)
// are the branches of other parameters of the same search type put
// together, or, for a reference parameter, a branch may be another's
// single branch followed by .where(resolve() is T). A source has no
// sources itself; of parameters with the same branches, the first by code
// is the source of the others.
func (r *Registry) findSources(typ string) {
	params := r.Params(typ)
	brs := make(map[*Param][]string, len(params))
	for _, p := range params {
		brs[p] = r.branches(p.Expression, typ)
	}
	// sourceOf returns a parameter that may be p's source for branch b.
	sourceOf := func(p *Param, b string) (*Param, string) {
		for _, q := range params {
			if q == p || q.Type != p.Type || len(brs[q]) == 0 {
				continue
			}
			within := true
			for _, qb := range brs[q] {
				within = within && slices.Contains(brs[p], qb)
			}
			equal := within && len(brs[q]) == len(brs[p])
			if within && slices.Contains(brs[q], b) && (!equal || q.Code < p.Code) {
				return q, ""
			}
		}
		if x, t, ok := resolveFilter(b); ok && p.Type == "reference" && r.model.IsResource(t) {
			for _, q := range params {
				if q != p && q.Type == p.Type && slices.Equal(brs[q], []string{x}) {
					return q, t
				}
			}
		}
		return nil, ""
	}
	found := map[*Param][]Source{}
	for _, p := range params {
		var sources []Source
		for _, b := range brs[p] {
			covered := slices.ContainsFunc(sources, func(s Source) bool {
				q := r.byType[typ][s.Code]
				return s.ResolveIs == "" && slices.Contains(brs[q], b)
			})
			if covered {
				continue
			}
			q, is := sourceOf(p, b)
			if q == nil {
				sources = nil
				break
			}
			sources = append(sources, Source{Code: q.Code, ResolveIs: is})
		}
		if len(sources) > 0 {
			found[p] = sources
		}
	}
	for p, sources := range found {
		chained := slices.ContainsFunc(sources, func(s Source) bool {
			_, ok := found[r.byType[typ][s.Code]]
			return ok
		})
		if !chained {
			p.Sources = sources
		}
	}
}

// branches returns the branches of expr's top-level union that apply to
// a resource of type typ (those not starting with another resource type's
// name),
// without surrounding spaces; nil when expr has none or cannot be split.
func (r *Registry) branches(expr, typ string) []string {
	var out []string
	depth, start := 0, 0
	var quote byte
	add := func(b string) {
		b = strings.TrimSpace(b)
		head := strings.TrimLeft(b, "( ")
		if i := strings.IndexAny(head, ".( "); i >= 0 {
			head = head[:i]
		}
		if head == typ || !r.model.IsResource(head) {
			out = append(out, b)
		}
	}
	for i := 0; i < len(expr); i++ {
		c := expr[i]
		switch {
		case quote != 0:
			if c == '\\' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"' || c == '`':
			quote = c
		case c == '(':
			depth++
		case c == ')':
			depth--
		case c == '|' && depth == 0:
			add(expr[start:i])
			start = i + 1
		}
	}
	if depth != 0 || quote != 0 {
		return nil
	}
	add(expr[start:])
	return out
}

// resolveFilter splits "X.where(resolve() is T)" into X and T.
func resolveFilter(b string) (x, t string, ok bool) {
	const mid = ".where(resolve() is "
	i := strings.LastIndex(b, mid)
	if i <= 0 || !strings.HasSuffix(b, ")") {
		return "", "", false
	}
	t = strings.TrimSpace(b[i+len(mid) : len(b)-1])
	t = strings.TrimPrefix(t, "FHIR.")
	if t == "" || strings.ContainsAny(t, " ().") {
		return "", "", false
	}
	return b[:i], t, true
}

// elementsRead returns the elements of a resource of type typ that expr
// reads, a choice element by each of its concrete names; nil when expr
// may give something whatever the resource holds.
func elementsRead(m *spec.Model, typ string, expr *fhirpath.Expr) []string {
	roots, ok := expr.Roots()
	if !ok {
		return nil
	}
	out := []string{} // known, even when empty (an expression giving nothing)
	for _, name := range roots {
		out = append(out, name)
		for _, el := range m.ChoiceElements(typ, name) {
			out = append(out, el.Name)
		}
	}
	return out
}

// Model returns the type model the registry was built with.
func (r *Registry) Model() *spec.Model { return r.model }

// Lookup returns the parameter code of type typ.
func (r *Registry) Lookup(typ, code string) (*Param, bool) {
	p, ok := r.byType[typ][code]
	return p, ok
}

// Params returns the parameters of typ sorted by code.
func (r *Registry) Params(typ string) []*Param {
	out := make([]*Param, 0, len(r.byType[typ]))
	for _, p := range r.byType[typ] {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Code < out[j].Code })
	return out
}

// TargetTypes returns the resource types a reference parameter may point
// to; for a parameter without declared targets, every resource type.
func (r *Registry) TargetTypes(p *Param) []string {
	if len(p.Targets) > 0 {
		return p.Targets
	}
	return r.model.ResourceTypes()
}

// ReferenceParams returns the reference parameters of typ that may point to
// target (used for _revinclude with a wildcard and compartments).
func (r *Registry) ReferenceParams(typ, target string) []*Param {
	var out []*Param
	for _, p := range r.Params(typ) {
		if p.Type == "reference" && (len(p.Targets) == 0 || slices.Contains(p.Targets, target)) {
			out = append(out, p)
		}
	}
	return out
}

// CompartmentParams returns the parameters of typ that tie a resource to a
// Patient in the R4 Patient compartment; nil when typ is not in it. For
// Patient itself the resource's own id also ties it (see InCompartment).
// The slice is shared: callers must not modify it.
func (r *Registry) CompartmentParams(typ string) []*Param {
	return r.compartment[typ]
}

// InPatientCompartment reports whether typ is in the Patient compartment.
func (r *Registry) InPatientCompartment(typ string) bool {
	if typ == "Patient" {
		return true
	}
	return len(r.CompartmentParams(typ)) > 0
}

// InCompartment reports whether a resource of typ with id and these index
// entries belongs to the compartment of Patient/patient.
func (r *Registry) InCompartment(typ, id string, entries []Entry, patient string) bool {
	if typ == "Patient" && id == patient {
		return true
	}
	want := ReferenceKey("Patient", patient)
	for _, p := range r.CompartmentParams(typ) {
		for _, e := range entries {
			if e.Param == p.Code && e.Key == want {
				return true
			}
		}
	}
	return false
}

// InRecord reports whether a resource of typ with id and these index
// entries belongs to the record of Patient/patient widened by the Patients
// linked to it: the compartment of patient, the compartments of the
// linked Patients for every type but Patient, and the linked Patients
// themselves. A Patient that merely links to a linked Patient is not in
// the record: only the member's own links decide who else is the member.
func (r *Registry) InRecord(typ, id string, entries []Entry, patient string, linked []string) bool {
	if r.InCompartment(typ, id, entries, patient) {
		return true
	}
	if typ == "Patient" {
		return slices.Contains(linked, id)
	}
	for _, l := range linked {
		if r.InCompartment(typ, id, entries, l) {
			return true
		}
	}
	return false
}

// Decides reports whether the entry of source s with key and payload is
// also one of the parameter it is a source of, when the key alone tells:
// always for a source without ResolveIs; for one with, when the reference
// names its resource type (as resolve() reads it: "Patient/1",
// "http://x/fhir/Patient/1"). decided is false when only the resource can
// tell (a reference typed by its type element, such as a urn:uuid).
func (r *Registry) Decides(s Source, key string, payload []byte) (in, decided bool) {
	if s.ResolveIs == "" {
		return true, true
	}
	if !strings.HasPrefix(key, pfxRef) {
		return false, true
	}
	ref := entryValue(pfxRef, key, payload)
	if i := strings.Index(ref, "/_history/"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndexByte(ref, '/'); i > 0 {
		t := ref[:i]
		t = t[strings.LastIndexByte(t, '/')+1:]
		if r.model.IsResource(t) {
			return t == s.ResolveIs, true
		}
	}
	return false, false
}
