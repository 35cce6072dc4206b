package provenance

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// PDexProvenanceProfile is the canonical URL of the Da Vinci PDex
// Provenance profile the target-role Provenance claims in meta.profile.
const PDexProvenanceProfile = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-provenance"

// The agent type of the source payer: US Core's provenance participant
// type "transmitter", as PDex's ProvenanceTransmitter slice requires.
const (
	participantTypeSystem = "http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type"
	transmitterCode       = "transmitter"
)

// uriIdentifierSystem marks an Identifier whose value is a URI (RFC 3986).
const uriIdentifierSystem = "urn:ietf:rfc:3986"

// IngestedResource is one resource written from an ingested page: its
// local type, id and the version the write produced (or found, when the
// page brought nothing new).
type IngestedResource struct {
	Type    string
	ID      string
	Version int64
}

// IngestedPage describes one page of a member's data pulled from a source
// payer and written here.
type IngestedPage struct {
	// ID is the Provenance's id. Callers make it deterministic (job and
	// page number) so that writing the same page twice cannot create two.
	ID string
	// Recorded is when the page was written.
	Recorded time.Time
	// PageURL is the absolute URL the page was fetched from.
	PageURL string
	// Description says in words which page this is, for the entity's
	// display (for example "page 3 of batch job 12").
	Description string
	// SourceName and SourceOrganizationID identify the source payer: the
	// OIDC server definition's name and organizationId.
	SourceName           string
	SourceOrganizationID string
	// Resources are the resources written from the page, in page order.
	Resources []IngestedResource
	// Versioned makes the targets version-specific references
	// (Type/id/_history/n) rather than plain ones (Type/id).
	Versioned bool
}

type provenanceJSON struct {
	ResourceType string       `json:"resourceType"`
	ID           string       `json:"id,omitempty"`
	Meta         metaJSON     `json:"meta"`
	Target       []refJSON    `json:"target"`
	Recorded     string       `json:"recorded"`
	Agent        []agentJSON  `json:"agent"`
	Entity       []entityJSON `json:"entity,omitempty"`
}

type metaJSON struct {
	Profile []string `json:"profile"`
}

type refJSON struct {
	Reference  string          `json:"reference,omitempty"`
	Type       string          `json:"type,omitempty"`
	Identifier *identifierJSON `json:"identifier,omitempty"`
	Display    string          `json:"display,omitempty"`
}

type identifierJSON struct {
	Type   *conceptJSON `json:"type,omitempty"`
	System string       `json:"system,omitempty"`
	Value  string       `json:"value"`
}

type conceptJSON struct {
	Coding []codingJSON `json:"coding,omitempty"`
	Text   string       `json:"text,omitempty"`
}

type codingJSON struct {
	System  string `json:"system"`
	Code    string `json:"code"`
	Display string `json:"display,omitempty"`
}

type agentJSON struct {
	Type conceptJSON `json:"type"`
	Who  refJSON     `json:"who"`
}

type entityJSON struct {
	Role string  `json:"role"`
	What refJSON `json:"what"`
}

// ForIngestedPage builds the target-role Provenance of p: one target per
// distinct resource written from the page, recorded at p.Recorded, the
// source payer as the transmitter agent, and the page URL as the source
// entity. It refuses a page without resources (a Provenance needs at least
// one target) and one whose source payer cannot be named.
func ForIngestedPage(p IngestedPage) (*store.Doc, error) {
	if len(p.Resources) == 0 {
		return nil, fmt.Errorf("provenance: page %s wrote no resources; a Provenance needs at least one target", p.ID)
	}
	if p.SourceOrganizationID == "" && p.SourceName == "" {
		return nil, fmt.Errorf("provenance: the source payer has neither an organizationId nor a name")
	}
	if p.Recorded.IsZero() {
		return nil, fmt.Errorf("provenance: page %s has no recorded time", p.ID)
	}
	pr := provenanceJSON{
		ResourceType: "Provenance",
		ID:           p.ID,
		Meta:         metaJSON{Profile: []string{PDexProvenanceProfile}},
		Recorded:     p.Recorded.UTC().Format("2006-01-02T15:04:05.000Z07:00"),
	}
	seen := make(map[string]bool, len(p.Resources))
	for _, r := range p.Resources {
		ref := r.Type + "/" + r.ID
		if seen[ref] {
			continue
		}
		seen[ref] = true
		if p.Versioned && r.Version > 0 {
			ref += fmt.Sprintf("/_history/%d", r.Version)
		}
		pr.Target = append(pr.Target, refJSON{Reference: ref})
	}
	who := refJSON{Type: "Organization", Display: p.SourceName}
	if p.SourceOrganizationID != "" {
		who.Identifier = &identifierJSON{Type: &conceptJSON{Text: "Payer ID"}, Value: p.SourceOrganizationID}
	}
	pr.Agent = []agentJSON{{
		Type: conceptJSON{Coding: []codingJSON{{System: participantTypeSystem, Code: transmitterCode, Display: "Transmitter"}}},
		Who:  who,
	}}
	if p.PageURL != "" {
		pr.Entity = []entityJSON{{
			Role: "source",
			What: refJSON{
				Type:       "Bundle",
				Identifier: &identifierJSON{System: uriIdentifierSystem, Value: p.PageURL},
				Display:    strings.TrimSpace(p.Description),
			},
		}}
	}
	raw, err := json.Marshal(pr)
	if err != nil {
		return nil, fmt.Errorf("provenance: encode: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("provenance: decode: %w", err)
	}
	return &store.Doc{Type: "Provenance", ID: p.ID, Map: m, JSON: raw}, nil
}
