package fhir

import (
	"encoding/json"
	"net/http"
	"sort"
	"time"
)

// The CapabilityStatement is built from what is registered: every type the
// model knows, every search parameter the registry indexes, every operation
// added. Nothing is listed that the server does not do.

type capStatement struct {
	ResourceType   string        `json:"resourceType"`
	Status         string        `json:"status"`
	Date           string        `json:"date"`
	Publisher      string        `json:"publisher,omitempty"`
	Kind           string        `json:"kind"`
	Software       capSoftware   `json:"software"`
	Implementation capImpl       `json:"implementation"`
	FhirVersion    string        `json:"fhirVersion"`
	Format         []string      `json:"format"`
	PatchFormat    []string      `json:"patchFormat,omitempty"`
	Rest           []capRest     `json:"rest"`
	Instantiates   []string      `json:"instantiates,omitempty"`
	Extension      []interface{} `json:"extension,omitempty"`
}

type capSoftware struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
}

type capImpl struct {
	Description string `json:"description"`
	URL         string `json:"url,omitempty"`
}

type capRest struct {
	Mode        string           `json:"mode"`
	Security    *CapSecurity     `json:"security,omitempty"`
	Resource    []capResource    `json:"resource"`
	Interaction []capInteraction `json:"interaction"`
	Operation   []capOperation   `json:"operation,omitempty"`
}

// CapSecurity is CapabilityStatement.rest.security, set by whatever guards
// the server (see SetSecurity).
type CapSecurity struct {
	Cors        bool             `json:"cors"`
	Service     []map[string]any `json:"service,omitempty"`
	Description string           `json:"description,omitempty"`
	Extension   []map[string]any `json:"extension,omitempty"`
}

type capResource struct {
	Type              string           `json:"type"`
	Interaction       []capInteraction `json:"interaction"`
	Versioning        string           `json:"versioning"`
	ReadHistory       bool             `json:"readHistory"`
	UpdateCreate      bool             `json:"updateCreate"`
	ConditionalCreate bool             `json:"conditionalCreate"`
	ConditionalRead   string           `json:"conditionalRead"`
	ConditionalUpdate bool             `json:"conditionalUpdate"`
	ConditionalDelete string           `json:"conditionalDelete"`
	SearchInclude     []string         `json:"searchInclude,omitempty"`
	SearchRevInclude  []string         `json:"searchRevInclude,omitempty"`
	SearchParam       []capParam       `json:"searchParam,omitempty"`
	Operation         []capOperation   `json:"operation,omitempty"`
}

type capInteraction struct {
	Code string `json:"code"`
}

type capParam struct {
	Name          string `json:"name"`
	Definition    string `json:"definition,omitempty"`
	Type          string `json:"type"`
	Documentation string `json:"documentation,omitempty"`
}

type capOperation struct {
	Name          string `json:"name"`
	Definition    string `json:"definition"`
	Documentation string `json:"documentation,omitempty"`
}

// mdmParamDoc documents the :mdm modifier on the reference parameters that
// accept it (R4 has no coded place for a server's own modifiers).
const mdmParamDoc = "Accepts the :mdm modifier (as HAPI FHIR): a reference to Patient/<id> also matches references to the Patients linked to it by MDM links (mutual Patient.link, one level)."

var typeInteractions = []capInteraction{
	{"read"}, {"vread"}, {"update"}, {"delete"}, {"history-instance"}, {"history-type"}, {"create"}, {"search-type"},
}

// SetSecurity sets the security section of the CapabilityStatement.
func (s *Server) SetSecurity(sec *CapSecurity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.security = sec
	s.capJSON = nil
}

func (s *Server) capabilityStatement() *capStatement {
	s.mu.RLock()
	ops := append([]*Operation(nil), s.operations...)
	sec := s.security
	links := s.links != nil
	s.mu.RUnlock()
	cs := &capStatement{
		ResourceType: "CapabilityStatement",
		Status:       "active",
		Date:         s.started.Format(time.RFC3339),
		Kind:         "instance",
		Software:     capSoftware{Name: s.cfg.Software, Version: s.cfg.Version},
		Implementation: capImpl{
			Description: "p2pserver: FHIR R4 payer-to-payer exchange server",
			URL:         s.cfg.BaseURL,
		},
		FhirVersion: "4.0.1",
		Format:      []string{"application/fhir+json", "json"},
	}
	if s.cfg.CORS {
		cp := CapSecurity{}
		if sec != nil {
			cp = *sec
		}
		cp.Cors = true
		sec = &cp
	}
	rest := capRest{Mode: "server", Security: sec,
		Interaction: []capInteraction{{"transaction"}, {"batch"}, {"history-system"}}}
	for _, op := range ops {
		if op.System {
			rest.Operation = append(rest.Operation, capOperation{Name: op.Name, Definition: op.Definition, Documentation: op.Documentation})
		}
	}
	for _, typ := range s.model.ResourceTypes() {
		res := capResource{
			Type: typ, Interaction: typeInteractions, Versioning: "versioned-update",
			ReadHistory: true, UpdateCreate: true, ConditionalCreate: true, ConditionalRead: "not-supported",
			ConditionalUpdate: true, ConditionalDelete: "single",
		}
		for _, p := range s.reg.Params(typ) {
			cp := capParam{Name: p.Code, Definition: p.URL, Type: p.Type}
			if links && s.reg.AcceptsMDM(p) {
				cp.Documentation = mdmParamDoc
			}
			res.SearchParam = append(res.SearchParam, cp)
			if p.Type == "reference" {
				res.SearchInclude = append(res.SearchInclude, typ+":"+p.Code)
			}
		}
		res.SearchRevInclude = s.revIncludesFor(typ)
		for _, op := range ops {
			if !op.Type && !op.Instance {
				continue
			}
			for _, t := range op.Types {
				if t == typ || t == "Resource" {
					res.Operation = append(res.Operation, capOperation{Name: op.Name, Definition: op.Definition, Documentation: op.Documentation})
					break
				}
			}
		}
		rest.Resource = append(rest.Resource, res)
	}
	cs.Rest = []capRest{rest}
	return cs
}

// revIncludesFor lists Type:param of the reference parameters of any type
// that can point at typ.
func (s *Server) revIncludesFor(typ string) []string {
	var out []string
	for _, t := range s.model.ResourceTypes() {
		for _, p := range s.reg.ReferenceParams(t, typ) {
			if len(p.Targets) > 0 {
				out = append(out, t+":"+p.Code)
			}
		}
	}
	sort.Strings(out)
	return out
}

// capabilities serves the CapabilityStatement, built once and rebuilt after
// an operation or the security section changes.
func (s *Server) capabilities(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	body := s.capJSON
	s.mu.RUnlock()
	if body == nil {
		var err error
		if body, err = json.Marshal(s.capabilityStatement()); err != nil {
			WriteError(w, r, err)
			return
		}
		s.mu.Lock()
		s.capJSON = body
		s.mu.Unlock()
	}
	writeBody(w, http.StatusOK, body)
}
