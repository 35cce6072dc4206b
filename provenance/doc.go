// Package provenance builds the Provenance resources that say where data
// came from, following the Da Vinci PDex Provenance profile
// (http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-provenance).
//
// Two roles share the package:
//
//   - target role (target.go): when this server ingests a member's data from
//     another payer, every page of resources written gets one Provenance
//     whose targets are the resources written from that page, with the
//     source payer as the transmitting agent and the page URL as the source
//     entity. The batch package writes it in the same transaction as the
//     page, so a page is never stored without its Provenance.
//   - source role (source.go): when this server serves a member's data to
//     another payer, Provenance is supplied for the resources it returns.
//
// The package only builds resources; it does not write them.
package provenance
