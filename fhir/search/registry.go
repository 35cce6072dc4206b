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
}

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
