package eligibility

import (
	"context"
	"errors"
	"net/http"
	"time"
)

// Connector is what every vendor adapter implements: one subpackage per
// vendor under facades/. The Service calls it from its worker, outside any
// database transaction, with a context that bounds the call.
//
// Errors are *errs.Error whose kind says what to do: Transient or Timeout
// (retried with backoff, then "payer could not be reached"), Unauthorized
// (the vendor refused this server's credentials even after a token
// refresh), Invalid or Unprocessable (the vendor refused the request; the
// message says why), anything else is internal.
type Connector interface {
	// Vendor is the connector's name, as routes and /api/webhooks/{vendor}
	// name it.
	Vendor() string
	// Statuses are the connector's rows of the status table: every status
	// the vendor documents and how it maps to FHIR. A status missing here
	// fails the check as "unmapped" rather than being guessed.
	Statuses() []StatusMapping
	// Check returns the fields the vendor (for route's payer) requires that
	// req lacks, and values it cannot accept, without doing any I/O (it may
	// use what the connector learnt earlier, such as a payer's required
	// fields). It runs inside the write transaction of the request.
	Check(route Route, req *Request) []Problem
	// Submit starts the check at the vendor. The Result is final or says
	// what the check waits for.
	Submit(ctx context.Context, route Route, req *Request) (Result, error)
	// Poll asks the vendor about a check waiting on ref (a Result.Ref or a
	// Hold.Ref). It may move the check along (for example request
	// eligibility once a datasource connection is connected).
	Poll(ctx context.Context, route Route, ref string, req *Request) (Result, error)
	// Webhook authenticates a delivery to /api/webhooks/{vendor} as the
	// vendor documents (an error of kind Unauthorized when it fails) and
	// returns what it announces. It must not trust the body beyond
	// locating the check: the Service polls the vendor's API for the result.
	Webhook(ctx context.Context, header http.Header, body []byte) ([]Notice, error)
}

// Unconfirmed marks err, the failure of a call that creates something at
// the vendor (a verification, a VOB, an eligibility request: calls that
// are not idempotent and may be billed), as one that may nonetheless have
// been carried out: a timeout or broken connection after the request was
// sent, an answer of 500, 502 or 504 (vendorhttp.MaybeProcessed). The
// worker then never repeats the call blindly (see Request.Unconfirmed).
// Connectors mark the error of their create calls only; a failed token or
// read call is repeated freely. The error keeps err's kind.
func Unconfirmed(err error) error {
	if err == nil {
		return nil
	}
	return &unconfirmedError{err}
}

type unconfirmedError struct{ err error }

func (e *unconfirmedError) Error() string { return e.err.Error() }
func (e *unconfirmedError) Unwrap() error { return e.err }

// IsUnconfirmed reports whether err was marked by Unconfirmed.
func IsUnconfirmed(err error) bool {
	var u *unconfirmedError
	return errors.As(err, &u)
}

// Finder is implemented by connectors that can find, at the vendor, what
// an unconfirmed create call of a check made, by what the vendor documents
// (a search by the member's data, this server's own id). Before such a
// check is submitted again, the worker calls Find: found, its Result is
// the check's (and Submit is not called); not found, Submit is safe.
type Finder interface {
	// Find looks for what the call that failed at req.Unconfirmed made.
	Find(ctx context.Context, route Route, req *Request) (res Result, found bool, err error)
}

// WebhookConfirmer is implemented by connectors whose vendor sends, for
// every check it creates, a webhook naming the check by this server's id
// (Notice.RequestID): an unconfirmed create is then confirmed by that
// webhook, which gives the check its Ref, and the worker waits for it
// (Config.ConfirmWait) rather than creating again.
type WebhookConfirmer interface {
	ConfirmsByWebhook()
}

// Preparer is implemented by connectors that learn something from the
// vendor before checks are sent (VerifyTreatment's per-payer required
// fields). Service.Start calls Prepare once, in the worker, before the
// first job; an error is logged and the connector checks when it sends.
type Preparer interface {
	Prepare(ctx context.Context, routes []Route) error
}

// TwoFactor is implemented by connectors whose checks can wait for a
// second-factor code (tuuthfairy datasource connections).
type TwoFactor interface {
	// Confirm2FA relays code for the hold ref (a Hold.Ref: the datasource
	// connection id) and returns the state that follows, whose Status is
	// looked up in the status table.
	Confirm2FA(ctx context.Context, ref, code string) (Result, error)
}

// Datasources is implemented by connectors that manage payer-portal
// datasource connections (tuuthfairy); the admin API at
// /api/eligibility/connections calls it.
type Datasources interface {
	// Connect creates a connection for a website with a provider NPI and
	// portal credentials.
	Connect(ctx context.Context, websiteID, npi string, cred Credentials) (Connection, error)
	// AddProvider adds a provider NPI to an existing connection.
	AddProvider(ctx context.Context, connectionID, npi string) error
	// Connection returns the vendor's current view of one connection.
	Connection(ctx context.Context, connectionID string) (Connection, error)
	// Connections lists the vendor's connections.
	Connections(ctx context.Context) ([]Connection, error)
}

// Credentials are payer-portal login credentials. They are encrypted at
// rest and never returned by the API.
type Credentials struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// Connection is a datasource connection as the vendor reports it.
type Connection struct {
	ID        string   `json:"id"`
	WebsiteID string   `json:"websiteId"`
	Status    string   `json:"status"`
	NPIs      []string `json:"npis"`
}

// Result is a vendor's answer to Submit, Poll or Confirm2FA.
type Result struct {
	// Ref is the vendor's id for the check (verification id, VOB id,
	// eligibility request id), kept to poll it and to match webhooks.
	Ref string
	// Status is the vendor's status word, looked up in the status table.
	Status string
	// Reason is the vendor's explanation, shown in the disposition or the
	// Task's status reason (for example INACTIVE or NON_COVERED).
	Reason string
	// Coverage holds plan and benefit details when the vendor returned them.
	Coverage *Coverage
	// Hold says what input the check waits for when its status maps to an
	// on-hold Task.
	Hold *Hold
	// PollAfter, when set, is when the vendor suggests asking again.
	PollAfter time.Duration
}

// Hold describes input a check waits for.
type Hold struct {
	// Ref identifies what waits (a datasource connection id): Poll and
	// Confirm2FA are called with it, and webhooks about it wake the check.
	Ref string
	// Prompt tells the user what to provide.
	Prompt string
}

// Notice is one event a webhook delivery announces.
type Notice struct {
	// DeliveryID identifies the delivery: a second delivery with the same
	// id is acknowledged and ignored.
	DeliveryID string
	// Ref is the vendor id of the check or connection the event is about.
	Ref string
	// Event and Status are the vendor's words, for logs and connection
	// records.
	Event  string
	Status string
	// ConnectionID is set when the event is about a datasource connection,
	// whose stored record then takes Status.
	ConnectionID string
	// RequestID is this server's id of the check (the
	// CoverageEligibilityRequest id), when the vendor's event carries the
	// id this server gave the check; a check still waiting for its create
	// call's answer (or whose create call went unconfirmed) takes Ref from
	// it.
	RequestID string
}

// Coverage is plan and benefit information in vendor-neutral form.
type Coverage struct {
	PlanName    string
	GroupNumber string
	GroupName   string
	// Start and End bound the coverage (YYYY-MM-DD), when known.
	Start, End string
	Benefits   []Benefit
}

// Benefit is one benefit line: amounts for a service type in or out of
// network. Nil means the vendor did not say.
type Benefit struct {
	// ServiceType is an X12 service type code ("30", "35", "MH").
	ServiceType string
	// Name describes the service type when the code alone does not.
	Name string
	// Network is "in", "out" or "" (applies to both).
	Network string
	// Unit is "individual", "family" or "".
	Unit string
	// Covered says whether the service is covered (excluded when false).
	Covered *bool
	// AuthorizationRequired says whether prior authorization is needed.
	AuthorizationRequired *bool
	Copay                 *float64 // USD per visit
	// Coinsurance is the member's share, 0..1 (0.2 = 20%).
	Coinsurance          *float64
	Deductible           *float64 // USD per term
	DeductibleRemaining  *float64
	OutOfPocket          *float64 // out-of-pocket maximum, USD
	OutOfPocketRemaining *float64
	Maximum              *float64 // benefit maximum (dental annual max), USD
	MaximumRemaining     *float64
}
