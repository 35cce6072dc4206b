// Package eligibility puts eligibility vendors (Sohar, VerifyTreatment,
// tuuthfairy, and any later one) behind FHIR R4: a client creates a
// CoverageEligibilityRequest (or calls $submit), the request is routed by
// payer id to the vendor configured for that payer, and the vendor's answer
// comes back as a CoverageEligibilityResponse linked to the request.
//
// The moving parts:
//
//   - a validator on CoverageEligibilityRequest that, inside the write
//     transaction, extracts what vendors need (patient, member id, payer id,
//     provider NPI, service items), checks the routing table and the payer's
//     required fields, and refuses the write with 422 naming every missing
//     field, before any vendor is called;
//   - a store hook that, in the same transaction, records a job and creates
//     the Task that tracks it (Task.focus is the request);
//   - a worker, owned by Service and stopped by Close, that calls vendors
//     outside transactions, retries what is transient, polls what is
//     asynchronous, and writes the CoverageEligibilityResponse and the Task's
//     progress back through the FHIR server (so Subscriptions fire). Jobs are
//     stored in the database and survive restarts;
//   - one Connector interface every vendor adapter implements, and one
//     status table (StatusTable) that says deliberately how each vendor
//     status maps to FHIR;
//   - /api routes: vendor webhooks at /api/webhooks/{vendor}, authenticated
//     as each vendor documents, and the admin API for datasource connections
//     at /api/eligibility/connections.
package eligibility
