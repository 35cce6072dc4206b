package mdm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// Code systems of the CARIN Blue Button patient identifier types
// (ValueSet C4BBPatientIdentifierType).
const (
	C4BBIdentifierTypeSystem = "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBIdentifierType"
	V2IdentifierTypeSystem   = "http://terminology.hl7.org/CodeSystem/v2-0203"
)

// PatientIdentifierType is one code of the C4BBPatientIdentifierType value set.
type PatientIdentifierType struct {
	System, Code, Display string
}

// PatientIdentifierTypes are the CARIN BB patient identifier types, in the
// order MemberIdentifier prefers them: the identifiers that name the member
// across the payer first, the record-keeping ones last.
var PatientIdentifierTypes = []PatientIdentifierType{
	{C4BBIdentifierTypeSystem, "um", "Unique Member ID"},
	{V2IdentifierTypeSystem, "MB", "Member Number"},
	{C4BBIdentifierTypeSystem, "pat", "Patient Account Number"},
	{V2IdentifierTypeSystem, "MR", "Medical Record Number"},
}

// Identifier is a member identifier found on a source payer's Patient.
type Identifier struct {
	// Type is the CARIN BB type it carries.
	Type PatientIdentifierType
	// System and Value are as the source payer wrote them.
	System, Value string
}

// MemberIdentifier returns the identifier of a source payer's Patient that
// names the member there: among its identifiers with a value and a CARIN BB
// patient identifier type, the one whose type comes first in
// PatientIdentifierTypes (the first such identifier for a tie). ok is false
// when the Patient has none.
func MemberIdentifier(patient map[string]any) (id Identifier, ok bool) {
	best := len(PatientIdentifierTypes)
	ids, _ := patient["identifier"].([]any)
	for _, raw := range ids {
		ident, _ := raw.(map[string]any)
		value, _ := ident["value"].(string)
		if value == "" {
			continue
		}
		system, _ := ident["system"].(string)
		typ, _ := ident["type"].(map[string]any)
		codings, _ := typ["coding"].([]any)
		for _, c := range codings {
			coding, _ := c.(map[string]any)
			cs, _ := coding["system"].(string)
			code, _ := coding["code"].(string)
			for rank, t := range PatientIdentifierTypes[:best] {
				if t.System == cs && t.Code == code {
					best = rank
					id, ok = Identifier{Type: t, System: system, Value: value}, true
					break
				}
			}
		}
	}
	return id, ok
}

// Assigner names the source payer in the identifier added to the member.
type Assigner struct {
	Name           string // the OIDC server definition's name
	OrganizationID string // its organizationId (payer id)
}

// Linker links the ingested copy of the source payer's Patient with the
// target member, both ways, so that the data brought over is the member's
// record (see Linked); with an identifier system it also adds the source
// payer's member identifier to the member. A nil Linker does nothing.
type Linker struct {
	system string
}

// NewLinker returns a Linker that links records and, when system is not
// "", adds member identifiers under system (the -mdm-identifier-system
// setting).
func NewLinker(system string) *Linker { return &Linker{system: system} }

// Enabled reports whether the Linker links records (any non-nil Linker).
func (l *Linker) Enabled() bool { return l != nil }

// AddsIdentifiers reports whether the Linker adds the source payer's
// member identifier to the member (it has an identifier system).
func (l *Linker) AddsIdentifiers() bool { return l != nil && l.system != "" }

// System is the identifier system member identifiers are added under.
func (l *Linker) System() string {
	if l == nil {
		return ""
	}
	return l.system
}

// linkType is the Patient.link type used both ways: each record is valid and
// in use, and the other holds data about the same person.
const linkType = "seealso"

// LinkIngested amends doc, the ingested copy of the source payer's Patient
// as it is about to be stored, with a link to Patient/memberID. It returns
// whether doc changed (false for a nil Linker or when the link is there).
func (l *Linker) LinkIngested(doc *store.Doc, memberID string) (bool, error) {
	if !l.Enabled() {
		return false, nil
	}
	if doc.Type != "Patient" {
		return false, fmt.Errorf("mdm: link a Patient, not a %s", doc.Type)
	}
	return addLink(doc, "Patient/"+memberID)
}

// AmendMember returns the member's Patient with the source identifier added
// under the Linker's system (assigned by the source payer; none without a
// system) and a link to the ingested copy Patient/ingestedID, ready to be
// written; nil when the member already has both or the Linker is nil.
// member is the member's current version.
func (l *Linker) AmendMember(member *store.Version, id Identifier, by Assigner, ingestedID string) (*store.Doc, error) {
	if !l.Enabled() {
		return nil, nil
	}
	if member == nil || member.Type != "Patient" || member.Deleted {
		return nil, fmt.Errorf("mdm: the member must be a current Patient")
	}
	m, err := decode(member.JSON)
	if err != nil {
		return nil, fmt.Errorf("mdm: member Patient/%s: %w", member.ID, err)
	}
	doc := &store.Doc{Type: member.Type, ID: member.ID, Map: m, JSON: member.JSON}
	changed := false
	if l.system != "" && id.Value != "" && !hasIdentifier(m, l.system, id.Value) {
		ids, _ := m["identifier"].([]any)
		ids = append(append([]any(nil), ids...), l.identifier(id, by))
		if err := doc.Set("identifier", ids); err != nil {
			return nil, err
		}
		changed = true
	}
	if ingestedID != "" {
		linked, err := addLink(doc, "Patient/"+ingestedID)
		if err != nil {
			return nil, err
		}
		changed = changed || linked
	}
	if !changed {
		return nil, nil
	}
	return doc, nil
}

// identifier is the Identifier added to the member: the source's value and
// type, under the configured system, assigned by the source payer.
func (l *Linker) identifier(id Identifier, by Assigner) map[string]any {
	out := map[string]any{
		"type": map[string]any{"coding": []any{map[string]any{
			"system": id.Type.System, "code": id.Type.Code, "display": id.Type.Display,
		}}},
		"system": l.system,
		"value":  id.Value,
	}
	assigner := map[string]any{}
	if by.OrganizationID != "" {
		assigner["identifier"] = map[string]any{"value": by.OrganizationID}
	}
	if by.Name != "" {
		assigner["display"] = by.Name
	}
	if len(assigner) > 0 {
		out["assigner"] = assigner
	}
	return out
}

func hasIdentifier(patient map[string]any, system, value string) bool {
	ids, _ := patient["identifier"].([]any)
	for _, raw := range ids {
		ident, _ := raw.(map[string]any)
		if ident["system"] == system && ident["value"] == value {
			return true
		}
	}
	return false
}

// addLink adds {other: ref, type: seealso} to doc's Patient.link unless a
// link to ref is there.
func addLink(doc *store.Doc, ref string) (bool, error) {
	links, _ := doc.Map["link"].([]any)
	for _, raw := range links {
		link, _ := raw.(map[string]any)
		other, _ := link["other"].(map[string]any)
		if other["reference"] == ref {
			return false, nil
		}
	}
	links = append(append([]any(nil), links...), map[string]any{
		"other": map[string]any{"reference": ref},
		"type":  linkType,
	})
	if err := doc.Set("link", links); err != nil {
		return false, err
	}
	return true, nil
}

func decode(raw []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	return m, nil
}

// RecordLinkTypes are the Patient.link types (R4 code system
// http://hl7.org/fhir/link-type) by which two Patients are one person's
// record. All four say the other resource "concerns the same actual
// patient" (R4 Patient.link); they differ only in which record is the main
// one, which does not change whose data it is: seealso (both in use, the
// link batch ingestion writes), replaces and replaced-by (a merge: the
// surviving record and the retired one), refer (this record is not the
// main source; the other should be consulted).
var RecordLinkTypes = []string{"replaced-by", "replaces", "refer", "seealso"}

// Linked returns the ids of the Patients linked to Patient/patient as one
// person's record, in id order, without patient itself (the rule the FHIR
// server follows, fhir.PatientLinks). A Patient/P counts when:
//
//   - patient's Patient.link has other = Patient/P (a relative reference,
//     as batch ingestion writes it; a /_history/n suffix is ignored) with a
//     type in RecordLinkTypes;
//   - Patient/P exists (not deleted) and its own Patient.link names
//     Patient/patient back with a type in RecordLinkTypes: both records
//     assert the link, so one resource alone cannot claim another
//     person's record;
//   - it is one level deep: the Patients linked to P are not followed, so
//     that a link made for one member never reaches another member's
//     record through a record they share.
//
// Links to RelatedPerson, absolute URLs and logical references (identifier
// only) are not followed. Who may write Patient.link is the FHIR server's
// rule (only its own jobs and admins).
func Linked(tx *store.Tx, patient string) []string {
	v, err := tx.Read("Patient", patient)
	if err != nil {
		return nil
	}
	var out []string
	for _, other := range recordLinks(v.JSON) {
		if other == patient || slices.Contains(out, other) {
			continue
		}
		ov, err := tx.Read("Patient", other)
		if err != nil {
			continue
		}
		if slices.Contains(recordLinks(ov.JSON), patient) {
			out = append(out, other)
		}
	}
	slices.Sort(out)
	return out
}

// recordLinks returns the ids of the Patients a stored Patient links to
// with a type in RecordLinkTypes.
func recordLinks(raw []byte) []string {
	var p struct {
		Link []struct {
			Other struct {
				Reference string `json:"reference"`
			} `json:"other"`
			Type string `json:"type"`
		} `json:"link"`
	}
	if json.Unmarshal(raw, &p) != nil {
		return nil
	}
	var out []string
	for _, l := range p.Link {
		if !slices.Contains(RecordLinkTypes, l.Type) {
			continue
		}
		ref := l.Other.Reference
		if i := strings.Index(ref, "/_history/"); i > 0 {
			ref = ref[:i]
		}
		id, ok := strings.CutPrefix(ref, "Patient/")
		if ok && id != "" && !strings.ContainsAny(id, "/:?#") {
			out = append(out, id)
		}
	}
	return out
}
