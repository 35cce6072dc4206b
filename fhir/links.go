package fhir

import (
	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/store"
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
	s.policy.LinkPatients(f)
}

func (s *Server) patientLinks() PatientLinks {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.links
}

// MemberPatients returns the Patients whose data is the record of the
// member Patient/member: the member first, then the Patients linked to it
// (see SetPatientLinks) in id order. A request confined to the member
// (Access.Patient) reads the compartments of exactly these Patients, and
// of the other Patients only the member's own compartment (Patients that
// link to the member); see InMemberRecord.
func (s *Server) MemberPatients(tx *store.Tx, member string) []string {
	return s.policy.Patients(tx, &authz.Principal{Patient: member})
}

// InMemberRecord reports whether the current version of typ/id belongs to
// the record of the member Patient/member by the access policy's rules
// (authz): for the types of the Patient compartment, the member's
// compartment, the compartments of the Patients linked to it for every
// type but Patient, and those linked Patients themselves.
func (s *Server) InMemberRecord(tx *store.Tx, member, typ, id string) bool {
	v, err := tx.Read(typ, id)
	return err == nil && s.policy.CanSee(tx, &authz.Principal{Patient: member}, v)
}
