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
package mdm
