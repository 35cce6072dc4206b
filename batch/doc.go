// Package batch runs P2P exchange jobs: with a member's tokens from a source
// payer, a job pages through the source's FHIR Bundles and stores the
// resources here, proving where each came from.
//
// A job is created by POST /api/oidc_servers/{id}/batch_job (api.go) and
// recorded in the store's key-value buckets (jobs.go), so it lives in the
// same database and transactions as the resources it writes. A Runner
// (runner.go) owns a pool of workers that advance jobs one page at a time,
// round robin, so a long job never holds up another member's: a worker
// fetches a page (fetch.go: same-origin only, the member's bearer token with
// one refresh on 401, bounded retries with backoff on 429 and 5xx), prepares
// it outside the single store writer (page.go: validation, local ids,
// reference rewriting, index entries), then writes it in ONE transaction
// (ingest.go): the resources, the page's Provenance, the MDM link of the
// member, and the job's checkpoint (the next link and the counts). A crash
// therefore never leaves a page half recorded, and a restarted server
// resumes every unfinished job from its checkpoint.
//
// Identity: a resource from the source is stored under a local id derived
// from its source identity (the source's FHIR base, type and id), and the
// source identity is kept in meta.source. Re-running or resuming a job thus
// updates the same local resources and never duplicates one; a resource
// that arrives unchanged is not written again at all.
//
// References between ingested resources are rewritten to the local ids.
// A reference to a resource that has not (yet) been ingested points at the
// source payer (an absolute URL) until that resource arrives, when the
// referring resources are rewritten to the local id in the same
// transaction; references are thus always resolvable, locally where the
// data is here.
//
// Bulk exchange jobs (bulkjob.go, bulkrun.go, bulkapi.go) are the PDex
// STU 2.1 bulk payer-to-payer exchange with this server requesting: many
// members at once, connected as a system (SMART Backend Services), through
// Group/$bulk-member-match and Group/{id}/$davinci-data-export at the old
// payer (the bulk package's Client). They are records of the same kind
// (Kind "bulk"), worked by the same Runner under the same leases, and
// ingest the export's NDJSON files by the same rules, one chunk of lines
// per transaction with its Provenance and checkpoint (the file and line),
// so that a restart goes on after the last line written. A definition's
// schedule (bulkschedule.go) repeats the pull for the members still
// covered by the old payer.
package batch
