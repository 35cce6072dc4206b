package spec

import (
	"slices"
	"sync"
)

// SearchParam is a SearchParameter definition, with what a server needs.
type SearchParam struct {
	Code, Name, URL, Type, Expression string // Type: number, date, string, token, reference, composite, quantity, uri, special
	Base                              []string
	Target                            []string
	Modifier, Comparator              []string
	Chain                             []string
	Components                        []SearchParamComponent // for composite parameters
	// MultipleOr and MultipleAnd are nil when the definition does not say
	// whether several values (a,b) or several repetitions are allowed.
	MultipleOr, MultipleAnd *bool
	ID                      string // the SearchParameter resource id, e.g. "Patient-birthdate"
}

// SearchParamComponent is one component of a composite search parameter:
// the URL of the parameter it uses, and the expression giving its value
// relative to the composite's own expression.
type SearchParamComponent struct{ Definition, Expression string }

// searchParamJSON is the embedded (trimmed) SearchParameter shape.
type searchParamJSON struct {
	ID          string   `json:"id"`
	URL         string   `json:"url"`
	Name        string   `json:"name"`
	Code        string   `json:"code"`
	Base        []string `json:"base"`
	Type        string   `json:"type"`
	Expression  string   `json:"expression"`
	Target      []string `json:"target"`
	Modifier    []string `json:"modifier"`
	Comparator  []string `json:"comparator"`
	MultipleOr  *bool    `json:"multipleOr"`
	MultipleAnd *bool    `json:"multipleAnd"`
	Chain       []string `json:"chain"`
	Component   []struct {
		Definition string `json:"definition"`
		Expression string `json:"expression"`
	} `json:"component"`
}

var (
	paramsOnce   sync.Once
	r4Params     []SearchParam
	usCoreParams []SearchParam
)

func loadParams() {
	paramsOnce.Do(func() {
		r4Params = mustParams("search-parameters.json")
		usCoreParams = mustParams("search-parameters-uscore.json")
	})
}

func mustParams(file string) []SearchParam {
	var raw []searchParamJSON
	if err := readData(file, &raw); err != nil {
		panic("spec: " + err.Error())
	}
	out := make([]SearchParam, len(raw))
	for i, r := range raw {
		sp := SearchParam{
			Code: r.Code, Name: r.Name, URL: r.URL, Type: r.Type, Expression: r.Expression,
			Base: r.Base, Target: r.Target, Modifier: r.Modifier, Comparator: r.Comparator,
			Chain: r.Chain, MultipleOr: r.MultipleOr, MultipleAnd: r.MultipleAnd, ID: r.ID,
		}
		for _, c := range r.Component {
			sp.Components = append(sp.Components, SearchParamComponent{Definition: c.Definition, Expression: c.Expression})
		}
		out[i] = sp
	}
	return out
}

// SearchParams returns every SearchParameter of FHIR R4 (1378 of them), in
// the order of the specification's bundle. The result is the caller's to
// keep and modify.
func SearchParams() []SearchParam {
	loadParams()
	return cloneParams(r4Params)
}

// USCoreSearchParams returns the US Core SearchParameters. The result is
// the caller's to keep and modify.
func USCoreSearchParams() []SearchParam {
	loadParams()
	return cloneParams(usCoreParams)
}

func cloneParams(in []SearchParam) []SearchParam {
	out := make([]SearchParam, len(in))
	for i, sp := range in {
		sp.Base = slices.Clone(sp.Base)
		sp.Target = slices.Clone(sp.Target)
		sp.Modifier = slices.Clone(sp.Modifier)
		sp.Comparator = slices.Clone(sp.Comparator)
		sp.Chain = slices.Clone(sp.Chain)
		sp.Components = slices.Clone(sp.Components)
		if sp.MultipleOr != nil {
			b := *sp.MultipleOr
			sp.MultipleOr = &b
		}
		if sp.MultipleAnd != nil {
			b := *sp.MultipleAnd
			sp.MultipleAnd = &b
		}
		out[i] = sp
	}
	return out
}

// CompartmentSelf is the pseudo parameter code PatientCompartment lists for
// the Patient resource itself: a Patient is in its own compartment.
const CompartmentSelf = "{def}"

var (
	compartmentOnce sync.Once
	compartment     map[string][]string
)

// PatientCompartment returns, for each resource type in the Patient
// compartment, the search parameter codes that tie a resource of that type
// to a Patient (Observation: subject, performer). Patient maps to
// CompartmentSelf ("{def}", the Patient itself) and link. Types the
// compartment definition lists without parameters are not in the
// compartment and are left out. The map is the caller's to keep and modify
// (a copy on each call: per resource, use PatientCompartmentParams).
func PatientCompartment() map[string][]string {
	loadCompartment()
	out := make(map[string][]string, len(compartment))
	for k, v := range compartment {
		out[k] = slices.Clone(v)
	}
	return out
}

// PatientCompartmentParams returns the codes PatientCompartment lists for
// typ, nil when typ is not in the Patient compartment, without copying the
// whole map: the slice is shared and must not be modified.
func PatientCompartmentParams(typ string) []string {
	loadCompartment()
	return compartment[typ]
}

func loadCompartment() {
	compartmentOnce.Do(func() {
		var c struct {
			Resource []struct {
				Code  string   `json:"code"`
				Param []string `json:"param"`
			} `json:"resource"`
		}
		if err := readData("compartmentdefinition-patient.json", &c); err != nil {
			panic("spec: " + err.Error())
		}
		compartment = map[string][]string{}
		for _, r := range c.Resource {
			if len(r.Param) == 0 {
				continue
			}
			params := r.Param
			if r.Code == "Patient" {
				params = append([]string{CompartmentSelf}, params...)
			}
			compartment[r.Code] = params
		}
	})
}
