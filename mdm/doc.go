// Package mdm matches patients across payers: the member identifier added
// to the target member when their data is ingested from another payer, the
// link between the ingested copy of the source payer's Patient and the
// member here (link.go), and the PDex $member-match operation
// (membermatch.go).
//
// Matching is identifier based, as the P2P module guide describes for MDM:
// the source payer's member identifier (a CARIN Blue Button patient
// identifier type: unique member id, member number, patient account number,
// medical record number) is copied to the member under the identifier
// system the server is configured with, so that a search by that system
// and value finds the member, and a master data management process that
// matches on it sees the two records as one person.
//
// # The member's record across links
//
// Batch ingestion stores the source payer's Patient as its own resource
// (the ingested copy, under a local id derived from its source identity)
// and the data brought over refers to it. The Linker links the copy and
// the member both ways (Patient.link, type seealso), whether or not an
// identifier system is configured, and Linked is the rule by which the
// FHIR server (fhir.Server.SetPatientLinks) makes the linked Patients'
// data part of the member's record:
//
//   - the link types that count are the four of R4 (RecordLinkTypes):
//     replaced-by, replaces, refer and seealso, all of which name a record
//     of "the same actual patient";
//   - a link counts only when both Patients name each other (any of the
//     four types each way), so that no single resource can claim
//     another's record;
//   - it is followed one level deep from the Patient asked about, never
//     transitively: two members linked to one shared record do not see
//     each other's records, and a source payer's own links between its
//     Patients (rewritten to ingested copies) never reach a member here;
//   - only relative references to Patients are followed (not
//     RelatedPerson, absolute URLs or identifier-only references), and a
//     deleted Patient ends the link.
//
// Patient/{id}/$everything follows the links by default (_mdm=false does
// not), searches follow them with HAPI FHIR's :mdm modifier
// (Observation?subject:mdm=Patient/1), and a token bound to a member
// reads the linked records as the member's own. Patient.link itself may be
// written only by the server's own jobs and admins (fhir refuses any other
// token that would add, change or remove a link, or delete a linked
// Patient).
package mdm
