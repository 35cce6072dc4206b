// Package healthietest is a local Healthie: an in-memory GraphQL API that
// answers the queries and mutations p2pserver's Healthie facade uses, in
// Healthie's shapes (see schema.graphql), with Healthie's API-key headers,
// its rate limit (429), offset and cursor pagination, and webhooks signed
// the way Healthie documents. It parses and executes real GraphQL
// (graph-gophers/graphql-go), so a malformed or unknown query fails as it
// would against Healthie.
//
// Tests seed it, script it (force a 429 burst, delete records, send signed
// webhooks to a URL) and inspect what it received. cmd/healthie-sim runs it
// as a standalone server for developing without Healthie credentials.
package healthietest

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"

	graphql "github.com/graph-gophers/graphql-go"
)

// Schema is the GraphQL schema the simulator serves.
//
//go:embed schema.graphql
var Schema string

// Options configure a Simulator.
type Options struct {
	// APIKey is the key clients must send as "Authorization: Basic <key>"
	// with "AuthorizationSource: API". Default "sim-api-key".
	APIKey string
	// RatePerSecond is the per-key limit (Healthie's is 250); 0 means 250.
	RatePerSecond int
	// WebhookURL and WebhookSecret, when set, make mutations send Healthie's
	// signed webhooks (patient.created, appointment.created, ...) there.
	WebhookURL    string
	WebhookSecret string
	// Now is the simulator's clock; time.Now when nil.
	Now func() time.Time
}

// Simulator is an in-memory Healthie GraphQL API. It is an http.Handler
// serving POST /graphql.
type Simulator struct {
	opts   Options
	schema *graphql.Schema
	client *http.Client

	mu          sync.Mutex // guards st and everything below
	st          *State
	currentUser string
	tokens      float64
	lastRefill  time.Time
	forced429   int
	retryAfter  string
	failNext    map[string][]int
	late        map[string]time.Duration
	requests    []Request
	pending     []Event

	whMu       sync.Mutex
	deliveries []Delivery
	wg         sync.WaitGroup
}

// Request is one GraphQL request the simulator received.
type Request struct {
	OperationName string
	Query         string
	Variables     map[string]any
	Status        int // the HTTP status answered
}

// New builds a simulator with an organization and one provider, the owner
// of the API key (the "authenticated user" of Healthie's documentation).
func New(opts Options) *Simulator {
	if opts.APIKey == "" {
		opts.APIKey = "sim-api-key"
	}
	if opts.RatePerSecond <= 0 {
		opts.RatePerSecond = 250
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Simulator{opts: opts, st: newState(), client: &http.Client{Timeout: 10 * time.Second}, late: map[string]time.Duration{}, failNext: map[string][]int{}}
	s.schema = graphql.MustParseSchema(Schema, &root{s}, graphql.MaxDepth(12))
	s.st.Org = Organization{ID: s.st.NewID(), Name: "Simulated Practice", NPI: "1234567893", TaxID: "123456789", TaxIDType: "EIN"}
	owner := &User{ID: s.st.NewID(), FirstName: "Olivia", LastName: "Owner", Email: "owner@practice.example", OrgRole: "Standard", Qualifications: "MD", NPI: "1679576722", CreatedAt: s.now(), UpdatedAt: s.now()}
	s.st.Users[owner.ID] = owner
	s.currentUser = owner.ID
	s.tokens = float64(opts.RatePerSecond)
	s.lastRefill = time.Now()
	return s
}

// Start serves the simulator on a loopback httptest server; Close it (and
// then the simulator) when done.
func (s *Simulator) Start() *httptest.Server { return httptest.NewServer(s) }

// Close waits for webhooks still being delivered.
func (s *Simulator) Close() { s.wg.Wait() }

// APIKey is the key the simulator accepts.
func (s *Simulator) APIKey() string { return s.opts.APIKey }

// OwnerID is the id of the provider owning the API key.
func (s *Simulator) OwnerID() string { return s.currentUser }

func (s *Simulator) now() time.Time { return s.opts.Now().UTC() }

// Mutate runs fn with the simulator's state, under its lock. Use it to seed
// records and to script changes between requests (no webhook is sent: call
// SendWebhook for that).
func (s *Simulator) Mutate(fn func(st *State)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(s.st)
}

// ForceRateLimit makes the next n requests answer 429, each with
// Retry-After set to retryAfter (whole seconds; omitted when 0).
func (s *Simulator) ForceRateLimit(n int, retryAfter time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.forced429 = n
	s.retryAfter = ""
	if retryAfter > 0 {
		s.retryAfter = strconv.Itoa(int(retryAfter.Round(time.Second) / time.Second))
	}
}

// FailNext makes the next requests of the named operation ("CreateClient")
// answer these HTTP statuses (500, 502, 503...), one each, in order,
// without doing anything.
func (s *Simulator) FailNext(operationName string, statuses ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext[operationName] = append(s.failNext[operationName], statuses...)
}

// AnswerLate makes the next request of the named operation ("CreateClient")
// be carried out at once (its webhooks sent) and answered only d later: a
// client that gives up sooner sees a timeout, though Healthie did the
// work.
func (s *Simulator) AnswerLate(operationName string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.late[operationName] = d
}

// Requests returns the requests received so far.
func (s *Simulator) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// ResetRequests forgets the requests received so far.
func (s *Simulator) ResetRequests() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = nil
}

type gqlRequest struct {
	Query         string         `json:"query"`
	OperationName string         `json:"operationName"`
	Variables     map[string]any `json:"variables"`
}

func writeErr(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"message": msg}}})
}

// ServeHTTP answers POST /graphql (any path ending in /graphql).
func (s *Simulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasSuffix(r.URL.Path, "/graphql") {
		writeErr(w, http.StatusNotFound, "not found")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeErr(w, http.StatusMethodNotAllowed, "use POST")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		writeErr(w, http.StatusRequestEntityTooLarge, "request too large")
		return
	}
	var req gqlRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeErr(w, http.StatusBadRequest, "the body is not a GraphQL JSON request")
		return
	}
	s.mu.Lock()
	status := s.admit(r)
	if list := s.failNext[req.OperationName]; status == http.StatusOK && len(list) > 0 {
		status, s.failNext[req.OperationName] = list[0], list[1:]
	}
	s.requests = append(s.requests, Request{OperationName: req.OperationName, Query: req.Query, Variables: req.Variables, Status: status})
	if status != http.StatusOK {
		retry := s.retryAfter
		s.mu.Unlock()
		switch status {
		case http.StatusUnauthorized:
			writeErr(w, status, "API Key is invalid or missing (send Authorization: Basic <key> and AuthorizationSource: API)")
		case http.StatusTooManyRequests:
			if retry != "" {
				w.Header().Set("Retry-After", retry)
			}
			writeErr(w, status, "Rate limit exceeded")
		default:
			writeErr(w, status, "simulated failure")
		}
		return
	}
	late, isLate := s.late[req.OperationName]
	delete(s.late, req.OperationName)
	// One request at a time: resolvers read and write the state directly.
	resp := s.schema.Exec(context.WithoutCancel(r.Context()), req.Query, req.OperationName, req.Variables)
	events := s.pending
	s.pending = nil
	s.mu.Unlock()
	s.dispatch(events)
	if isLate {
		time.Sleep(late) // the work is done; the answer is late
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

// admit checks the API-key headers and the rate limit; s.mu is held.
func (s *Simulator) admit(r *http.Request) int {
	key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Basic ")
	if !ok || key != s.opts.APIKey || r.Header.Get("AuthorizationSource") != "API" {
		return http.StatusUnauthorized
	}
	if s.forced429 > 0 {
		s.forced429--
		return http.StatusTooManyRequests
	}
	now := time.Now()
	rate := float64(s.opts.RatePerSecond)
	s.tokens = min(rate, s.tokens+now.Sub(s.lastRefill).Seconds()*rate)
	s.lastRefill = now
	if s.tokens < 1 {
		return http.StatusTooManyRequests
	}
	s.tokens--
	return http.StatusOK
}

// ---- webhooks ----

// Event is one webhook: Healthie's thin payload.
type Event struct {
	ResourceID     string   `json:"resource_id"`
	ResourceIDType string   `json:"resource_id_type"`
	EventType      string   `json:"event_type"`
	ChangedFields  []string `json:"changed_fields,omitempty"`
}

// Delivery is one webhook sent, with the status it got (0 when the request
// failed) and the error, if any.
type Delivery struct {
	Event  Event
	Status int
	Err    error
}

// queueWebhook records an event of the running mutation; s.mu is held.
func (s *Simulator) queueWebhook(eventType, idType, id string, changed []string) {
	if s.opts.WebhookURL == "" {
		return
	}
	s.pending = append(s.pending, Event{ResourceID: id, ResourceIDType: idType, EventType: eventType, ChangedFields: changed})
}

// dispatch sends events in the background, in order, after the mutation's
// response: Healthie's webhooks are asynchronous too. WaitWebhooks waits.
func (s *Simulator) dispatch(events []Event) {
	if len(events) == 0 {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for _, ev := range events {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			_, _ = s.SendWebhook(ctx, s.opts.WebhookURL, s.opts.WebhookSecret, ev)
			cancel()
		}
	}()
}

// WaitWebhooks waits until the webhooks of past mutations are delivered.
func (s *Simulator) WaitWebhooks() { s.wg.Wait() }

// Deliveries returns the webhooks sent so far.
func (s *Simulator) Deliveries() []Delivery {
	s.whMu.Lock()
	defer s.whMu.Unlock()
	return append([]Delivery(nil), s.deliveries...)
}

// SendWebhook posts ev to url signed with secret, as Healthie does, and
// returns the status the receiver answered.
func (s *Simulator) SendWebhook(ctx context.Context, url, secret string, ev Event) (int, error) {
	body, err := json.Marshal(ev)
	if err != nil {
		return 0, err
	}
	status, err := s.SendRawWebhook(ctx, url, secret, body)
	s.whMu.Lock()
	s.deliveries = append(s.deliveries, Delivery{Event: ev, Status: status, Err: err})
	s.whMu.Unlock()
	return status, err
}

// SendRawWebhook posts body to url with Healthie's signature headers made
// with secret (see SignWebhook).
func (s *Simulator) SendRawWebhook(ctx context.Context, url, secret string, body []byte) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	for k, v := range SignWebhook(secret, http.MethodPost, req.URL.Path, req.URL.RawQuery, body) {
		req.Header[k] = v
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode >= 300 {
		return resp.StatusCode, errors.New(resp.Status)
	}
	return resp.StatusCode, nil
}

// Now returns the simulator's clock reading.
func (s *Simulator) Now() time.Time { return s.now() }

// String describes the simulator for logs.
func (s *Simulator) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("healthie simulator: %d users, %d appointments, %d policies, %d claims",
		len(s.st.Users), len(s.st.Appointments), len(s.st.Policies), len(s.st.Claims))
}
