package fhir

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// PatientLinks returns the ids of the Patients linked to Patient/patient
// as the same person's record (MDM links), without patient itself, in id
// order; nil when there are none or patient does not exist. It only reads
// through tx. The server's rule is mdm.Linked: mutual Patient.link, one
// level deep.
type PatientLinks func(tx *store.Tx, patient string) []string

// SetPatientLinks makes the server follow MDM links, with f deciding which
// Patients are linked to which:
//
//   - Patient/{id}/$everything gathers the compartments of the Patients
//     linked to id as well as its own (unless asked with _mdm=false);
//   - reference search parameters accept HAPI FHIR's :mdm modifier
//     (Observation?subject:mdm=Patient/1 matches references to Patient/1
//     and to the Patients linked to it), advertised in the
//     CapabilityStatement;
//   - a request confined to a member (Access.Patient) reads the records
//     of the member's linked Patients as the member's own (MemberPatients,
//     InMemberRecord). Writes stay confined to the member's own
//     compartment.
//
// Without it nothing follows links and :mdm is refused.
func (s *Server) SetPatientLinks(f PatientLinks) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.links = f
	s.capJSON = nil
}

func (s *Server) patientLinks() PatientLinks {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.links
}

// linked returns the Patients linked to patient; nil when links are not
// followed.
func (s *Server) linked(tx *store.Tx, patient string) []string {
	f := s.patientLinks()
	if f == nil || patient == "" {
		return nil
	}
	return slices.DeleteFunc(f(tx, patient), func(id string) bool { return id == patient })
}

// MemberPatients returns the Patients whose data is the record of the
// member Patient/member: the member first, then the Patients linked to it
// (see SetPatientLinks) in id order. A request confined to the member
// (Access.Patient) reads the compartments of exactly these Patients, and
// of the other Patients only the member's own compartment (Patients that
// link to the member); see InMemberRecord.
func (s *Server) MemberPatients(tx *store.Tx, member string) []string {
	return append([]string{member}, s.linked(tx, member)...)
}

// InMemberRecord reports whether the current version of typ/id belongs to
// the record of the member Patient/member: the member's compartment, the
// compartments of the Patients linked to it for every type but Patient,
// and those linked Patients themselves. This is the one rule by which a
// request confined to a member may read a resource of a type in the
// Patient compartment.
func (s *Server) InMemberRecord(tx *store.Tx, member, typ, id string) bool {
	return tx.InRecord(typ, id, member, s.linked(tx, member))
}

// mayWriteLinks checks that a request may add, change or remove
// Patient.link, which decides whose record a Patient's data belongs to:
// only unrestricted requests may (the server's own jobs such as batch
// ingestion, admin tokens, an open server). Any other token, member-bound
// or not, is refused, so that nobody can link their Patient to another
// person's and read that person's data as their own.
func (a *Access) mayWriteLinks(doc *store.Doc, prev *store.Version) error {
	if a == nil || doc.Type != "Patient" {
		return nil
	}
	var before any
	if prev != nil && !prev.Deleted {
		var err error
		if before, err = patientLinkOf(prev.JSON); err != nil {
			return err
		}
	}
	after := doc.Map["link"]
	if after == nil && before == nil {
		return nil
	}
	if before != nil && after != nil {
		// Compare as JSON values: the decoded forms differ in number types.
		raw, _ := json.Marshal(after)
		if now, err := normalizeJSON(raw); err == nil && reflect.DeepEqual(now, before) {
			return nil
		}
	}
	return errs.E("fhir.access", errs.Permission, fmt.Sprintf(
		"Patient.link of Patient/%s may only be changed by this server's MDM (batch ingestion) or an admin; send the links as they are", doc.ID))
}

// mayDeleteLinked checks that a request may delete typ/id: a restricted
// request may not delete a Patient that carries links, as that removes
// them.
func (a *Access) mayDeleteLinked(tx *store.Tx, typ, id string) error {
	if a == nil || typ != "Patient" {
		return nil
	}
	v, err := tx.Read(typ, id)
	if err != nil {
		return nil // nothing to delete: the delete itself says so
	}
	if l, err := patientLinkOf(v.JSON); err != nil || l != nil {
		return errs.E("fhir.access", errs.Permission, fmt.Sprintf(
			"Patient/%s is linked to other Patients by this server's MDM; only an admin may delete it", id))
	}
	return nil
}

// patientLinkOf returns the decoded Patient.link of a stored Patient, nil
// when it has none.
func patientLinkOf(raw []byte) (any, error) {
	var p struct {
		Link json.RawMessage `json:"link"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, fmt.Errorf("fhir: read Patient.link: %w", err)
	}
	if len(p.Link) == 0 || string(p.Link) == "null" {
		return nil, nil
	}
	return normalizeJSON(p.Link)
}

func normalizeJSON(raw []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}
