// Package notify implements FHIR R4 Subscriptions for p2pserver: criteria
// matched on every resource write, a durable outbox written in the same
// transaction as the write that caused it, and a worker that delivers over
// rest-hook (HTTP POST) and email (SMTP, github.com/wneessen/go-mail) with
// retries.
//
// # Subscriptions
//
// A Subscription is written like any resource (POST/PUT /fhir/Subscription).
// One written with status requested (or active) is checked — its criteria
// parse as a search on a resource type, its channel is rest-hook or email,
// a rest-hook endpoint's host is allowed by the host policy, mailto
// addresses are valid — and stored active; otherwise the write is refused
// with an OperationOutcome (422) naming each problem. Status off stops it;
// error is set by the server when delivery keeps failing (with the reason
// in Subscription.error), and writing requested again re-activates it and
// re-queues the notifications that failed.
//
// Criteria are any type-level search ("Task?code=...&status=requested",
// "CoverageEligibilityResponse?patient=Patient/1"). Every create or update
// whose new version matches notifies: an update of a resource that already
// matched notifies again (each version is an event; for Tasks, every status
// change is one), a write after which it no longer matches does not, and a
// delete does not. Email templates may skip writes a reader would not care
// about (see Template.Notable).
//
// # Whom a Subscription acts for
//
// A Subscription acts for its owner: the principal that last set what it
// sends where (its criteria and channel), with the rights its token had
// then (recorded beside it: member or client, patient, the permission
// letters its scopes granted on each type). Someone else changing only its
// status does not change its owner. Creating (or re-pointing) one needs
// read rights on the criteria's type, and a member's criteria must be
// confined to their own record (the access policy, fhir/authz, refuses
// otherwise). Matching (in the write transaction) and delivery (when the
// notification is sent) both ask the policy whether the owner may read the
// version in question (authz.Policy.CanSee): what the owner may not read
// is never sent, not even as a ping. A Subscription stored before owners
// were recorded sends nothing and is set to error until it is written
// again; the default Subscription a package seeds (Ensure) is the
// server's own.
//
// # Header secrets
//
// A rest-hook's channel.header values are secrets: they are taken out of
// the resource on every write, kept sealed with the server's secret key
// (Config.Cipher), sent only to the endpoint and never returned or logged;
// the resource keeps each header's name with the value HeaderMask.
//
// # Delivery
//
// Matching runs in a store hook inside the write transaction, from the
// write's index entries and an in-memory index of the active
// Subscriptions (no reads), and what the write owes is written to the
// outbox in that same transaction, so a committed write always has its
// notifications and a failed one has none: the notifications themselves
// when it matched a few Subscriptions, else one event row that the worker
// fans out into notifications as fast as it delivers (fanout.go). A
// write's cost does not grow with the number of Subscriptions it matches.
// The worker delivers them after the commit; a failure is retried with
// exponential backoff and jitter, and after Config.MaxAttempts the
// notification is kept as failed and its Subscription set to error.
// Deliveries to one recipient (a Subscription's endpoint, or one email
// address of it) are made one at a time in the order of the writes that
// caused them, a retried one holding back the later ones; recipients do
// not wait for each other (outbox.go). A crash
// between commit and delivery, or during it, loses nothing: the entry is
// still pending when the server starts again (at-least-once). Every
// delivery carries the notification's stable id (X-Notification-Id, and
// the email's Message-ID) so receivers can drop duplicates.
//
// Delivered notifications are removed from the outbox at once; failed ones
// are kept for Config.KeepFailed for the admin view
// (GET /api/notifications) and then removed. The outbox holds at most
// Config.MaxOutbox rows: a write that would add one more is refused (503,
// Retry-After). A type has at most Config.MaxPerType active Subscriptions.
// Delivery failures are logged once per Subscription and
// Config.FailureLogEvery, with their count and the last error.
package notify
