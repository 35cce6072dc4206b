// Package bulk is Bulk Data on the responding side of the PDex STU 2.1
// payer-to-payer exchange: Bulk Data Access STU 2 exports ($export at
// system, Patient and Group level; ATR's Group/{id}/$davinci-data-export
// with exportType hl7.fhir.us.davinci-pdex#payertopayer) and PDex's
// Group/$bulk-member-match, run as durable jobs.
//
// A kick-off (Prefer: respond-async) answers 202 with the status URL in
// Content-Location ([base]/bulkstatus/{job}). Polling it answers 202 with
// X-Progress and Retry-After while the job runs, the manifest when it is
// complete (transactionTime, request, requiresAccessToken true, output
// with type, url and count, error), an OperationOutcome when it failed;
// DELETE cancels it and deletes its files. The files
// ([base]/bulkfiles/{job}/{name}) are application/fhir+ndjson. The status
// URL and the files answer only the client that started the job (see
// Owner); to any other they do not exist (404).
//
// Jobs are records in the database beside the resources, with a
// checkpoint (the type, member and last id written, each file's size and
// count) committed after each slice of at most Config.Slice resources;
// files are written under Config.Dir. A restart truncates each file to its
// checkpointed size and resumes from the checkpoint. Each slice reads in
// one short read transaction, so memory stays that of one slice whatever
// the size of the export. Jobs take turns slice by slice on
// Config.Workers workers; finished jobs are deleted with their files
// after Config.Retention.
//
// The payer-to-payer scope (what is sent) is described in scope.go;
// $bulk-member-match in match.go. The requesting side is Client
// (client.go); the bulk exchange jobs that use it, and ingest what they
// download by the batch jobs' rules, are in package batch.
package bulk
