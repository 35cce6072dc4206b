// Package tuuthfairytest is a local simulator of the tuuthfairy GraphQL
// API on 127.0.0.1, for tests and for developing without tuuthfairy
// credentials. It parses and executes real GraphQL (graph-gophers/graphql-go)
// against Schema, which holds the documented operations: payers (with
// their websites and has2FA), connectDatasource, connection, connections,
// addProviderToConnection, confirmDatasource2FaCode (connection statuses
// auth_2fa_code, auth_failed, auth_in_progress, connected, disconnected),
// requestEligibility, and createWebhookConfig.
//
// Where tuuthfairy's documentation is silent, the simulator fixes a form
// and the connector follows it (listed in the README): the endpoint is
// POST /graphql with a bearer API key; eligibility(id) answers status
// requested | ok | failed with active, failureReason, plan and benefits;
// webhooks are {"id","event","data":{...}} bodies signed in the header
// x-tuuthfairy-signature (base64 RSA-SHA256 over the raw body, verified
// with the publicKey that createWebhookConfig returns, as in tuuthfairy's
// sample webhook server).
//
// Connections move as a payer portal login does: a new connection is
// auth_in_progress; the next read finds it connected, or auth_2fa_code for
// a website with 2FA, or auth_failed for scripted bad credentials; a
// confirmed code makes it auth_in_progress again, then connected on the
// next read. Each change sends datasource_* webhooks. Eligibility requests
// are requested until read Script.PendingPolls times, then ok or failed
// (eligibility_ok / eligibility_failed webhooks).
package tuuthfairytest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	graphql "github.com/graph-gophers/graphql-go"

	"github.com/p2pserver/p2pserver/internal/loopback"
)

// Schema is the GraphQL schema the simulator serves.
const Schema = `
schema { query: Query mutation: Mutation }

type Query {
  payers: [Payer!]!
  connection(id: ID!): Connection
  connections: [Connection!]!
  eligibility(id: ID!): Eligibility
}

type Mutation {
  connectDatasource(input: ConnectDatasourceInput!): ConnectDatasourcePayload!
  addProviderToConnection(connectionId: ID!, provider: ProviderInput!): AddProviderToConnectionPayload!
  confirmDatasource2FaCode(id: ID!, confirmCode: String!): ConfirmDatasource2FaCodePayload!
  requestEligibility(input: RequestEligibilityInput!): RequestEligibilityPayload!
  createWebhookConfig(input: WebhookConfigInput!): WebhookConfig!
}

type Payer { id: ID! name: String! website: Website }
type Website { id: ID! has2FA: Boolean! name: String! url: String! }

enum ConnectionStatus { auth_2fa_code auth_failed auth_in_progress connected disconnected }

type Connection { id: ID! datasourceId: ID! status: ConnectionStatus! providers: [ConnectionProvider!]! }
type ConnectionProvider { providerId: ID! name: String npi: String! }
type ConnectionResult { id: ID! status: ConnectionStatus! }
type UserError { type: String! message: String! field: String }

input ProviderInput { npi: String! }
input CredentialsInput { username: String! password: String! }
input ConnectDatasourceInput { websiteId: ID! provider: ProviderInput! credentials: CredentialsInput! }

type ConnectDatasourcePayload { result: ConnectionResult userErrors: [UserError!]! }
type AddProviderToConnectionPayload { success: Boolean! userErrors: [UserError!]! }
type ConfirmDatasource2FaCodePayload { result: ConnectionResult userErrors: [UserError!]! }

input PatientInput { firstName: String! lastName: String! memberId: String dob: String! }
input RequestEligibilityInput { patient: PatientInput! subscriber: PatientInput provider: ProviderInput! payerId: String! }
type RequestEligibilityPayload { result: EligibilityRef userErrors: [UserError!]! }
type EligibilityRef { id: ID! }

enum EligibilityStatus { requested ok failed }
type Eligibility {
  id: ID!
  status: EligibilityStatus!
  payerId: String!
  active: Boolean
  failureReason: String
  plan: Plan
  benefits: [Benefit!]!
}
type Plan { name: String groupNumber: String effectiveDate: String terminationDate: String }
type Benefit {
  category: String!
  serviceType: String
  network: String
  coinsurance: Float
  deductible: Float
  deductibleRemaining: Float
  maximum: Float
  maximumRemaining: Float
}

input WebhookConfigInput { name: String! endpoint: String! }
type WebhookConfig { id: ID! endpoint: String! publicKey: String! }
`

// Connection statuses.
const (
	Auth2FACode    = "auth_2fa_code"
	AuthFailed     = "auth_failed"
	AuthInProgress = "auth_in_progress"
	Connected      = "connected"
	Disconnected   = "disconnected"
)

// Options configure a simulator.
type Options struct {
	// Addr is the listen address; default 127.0.0.1:0.
	Addr string
}

// Script is what a member id gets from requestEligibility.
type Script struct {
	// Inactive makes the member's coverage inactive.
	Inactive bool
	// Failure fails the request with this failureReason
	// (patient_not_found, invalid_member_id, invalid_dob, invalid_name,
	// invalid_npi, payer_unavailable).
	Failure string
	// PendingPolls is how many reads answer requested first (default 1).
	PendingPolls int
	// ResolveDuringRead resolves the request while its first read is
	// under way (PendingPolls is then not used): the read answers
	// requested, as it read the request before the change, and the
	// eligibility_ok or eligibility_failed webhook is delivered, and
	// answered, before that answer. It is the order a client sees when the
	// webhook overtakes an eligibility query in flight.
	ResolveDuringRead bool
}

// Sim is a running simulator.
type Sim struct {
	URL    string
	srv    *httptest.Server
	schema *graphql.Schema
	key    *rsa.PrivateKey

	mu           sync.Mutex
	apiKeys      map[string]bool
	websites     map[string]*website
	payers       []*payer
	conns        map[string]*conn
	connOrder    []string
	eligs        map[string]*elig
	scripts      map[string]Script
	badPasswords map[string]bool
	code         string
	webhooks     []string
	calls        map[string]int
	callTimes    map[string][]time.Time
	failNext     []int
	retryAfter   string
	late         map[string]time.Duration
	sent         []Delivery
	wg           sync.WaitGroup
	closed       bool
	seq          int
}

type website struct {
	ID, Name, URL string
	Has2FA        bool
}

type payer struct {
	ID, Name  string
	WebsiteID string
}

type conn struct {
	ID, WebsiteID, Status string
	NPIs                  []string
	Username              string
	Confirmed             []string
	badLogin              bool
}

type elig struct {
	ID, PayerID, MemberID, NPI string
	Status, Failure            string
	Active                     bool
	left                       int
	overtake                   bool
}

// Delivery is a webhook the simulator sent.
type Delivery struct {
	Body   []byte
	Header http.Header
	Status int
}

// New starts a simulator with the documented sample websites
// (dnoaconnect.com, deltadentalins.com with 2FA, metdental.com,
// dentalofficetoolkit.com) and a payer for each.
func New(opt Options) (*Sim, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	s := &Sim{key: key, apiKeys: map[string]bool{}, websites: map[string]*website{}, conns: map[string]*conn{}, eligs: map[string]*elig{},
		scripts: map[string]Script{}, badPasswords: map[string]bool{}, code: "123456", calls: map[string]int{},
		callTimes: map[string][]time.Time{}, late: map[string]time.Duration{}}
	for _, w := range []*website{
		{ID: "dnoaconnect.com", Name: "DNOA Connect", URL: "https://www.dnoaconnect.com"},
		{ID: "deltadentalins.com", Name: "Delta Dental", URL: "https://www.deltadentalins.com", Has2FA: true},
		{ID: "metdental.com", Name: "MetLife Dental", URL: "https://www.metdental.com"},
		{ID: "dentalofficetoolkit.com", Name: "Dental Office Toolkit", URL: "https://www.dentalofficetoolkit.com"},
	} {
		s.websites[w.ID] = w
	}
	s.payers = []*payer{
		{ID: "CDCA1", Name: "Delta Dental of California", WebsiteID: "deltadentalins.com"},
		{ID: "65978", Name: "MetLife", WebsiteID: "metdental.com"},
		{ID: "DNOA1", Name: "Dental Network of America", WebsiteID: "dnoaconnect.com"},
		{ID: "62308", Name: "Cigna Dental"},
	}
	s.schema, err = graphql.ParseSchema(Schema, &resolver{s: s}, graphql.UseFieldResolvers())
	if err != nil {
		return nil, err
	}
	if s.srv, err = loopback.Serve(opt.Addr, http.HandlerFunc(s.serve)); err != nil {
		return nil, err
	}
	s.URL = s.srv.URL
	return s, nil
}

// Close stops the server and waits for webhook deliveries.
func (s *Sim) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
	s.srv.Close()
}

// AddAPIKey accepts a bearer API key.
func (s *Sim) AddAPIKey(k string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.apiKeys[k] = true
}

// RevokeAPIKey stops accepting a key.
func (s *Sim) RevokeAPIKey(k string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.apiKeys, k)
}

// Script sets what a member id gets.
func (s *Sim) Script(memberID string, sc Script) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts[memberID] = sc
}

// RejectPassword makes portal logins with this password fail (auth_failed).
func (s *Sim) RejectPassword(pw string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.badPasswords[pw] = true
}

// Set2FACode sets the code the portals expect (default 123456).
func (s *Sim) Set2FACode(code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.code = code
}

// Require2FA makes a connection ask for a code again (a portal session
// expired), with a datasource_waiting_2fa webhook.
func (s *Sim) Require2FA(connID string) {
	s.mu.Lock()
	c := s.conns[connID]
	if c != nil {
		c.Status = Auth2FACode
		s.eventLocked("datasource_waiting_2fa", map[string]any{"connectionId": c.ID, "status": c.Status})
	}
	s.mu.Unlock()
}

// Disconnect disconnects a connection, with a datasource_disconnected
// webhook.
func (s *Sim) Disconnect(connID string) {
	s.mu.Lock()
	if c := s.conns[connID]; c != nil {
		c.Status = Disconnected
		s.eventLocked("datasource_disconnected", map[string]any{"connectionId": c.ID, "status": c.Status})
	}
	s.mu.Unlock()
}

// ConnectionStatus returns a connection's status without moving it.
func (s *Sim) ConnectionStatus(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.conns[id]; c != nil {
		return c.Status
	}
	return ""
}

// ConfirmedCodes returns the codes relayed for a connection.
func (s *Sim) ConfirmedCodes(id string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.conns[id]; c != nil {
		return append([]string(nil), c.Confirmed...)
	}
	return nil
}

// Calls counts GraphQL operations by their first field ("requestEligibility").
func (s *Sim) Calls(field string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[field]
}

// FailNext makes the next GraphQL requests answer these HTTP statuses,
// one each, in order, without doing anything.
func (s *Sim) FailNext(statuses ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext = append(s.failNext, statuses...)
}

// RetryAfter sets the Retry-After header FailNext's answers carry ("" for
// none): delay-seconds ("1") or an HTTP-date.
func (s *Sim) RetryAfter(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retryAfter = v
}

// AnswerLate makes the next operation whose first field is field
// ("requestEligibility") be carried out at once and answered only d
// later: a client that gives up sooner sees a timeout, though the work
// was done (and its webhooks sent).
func (s *Sim) AnswerLate(field string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.late[field] = d
}

// CallTimes returns when each operation whose first field is field
// arrived.
func (s *Sim) CallTimes(field string) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.callTimes[field]...)
}

// Deliveries returns the webhooks sent.
func (s *Sim) Deliveries() []Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Delivery(nil), s.sent...)
}

// PublicKeyPEM is the key webhooks are signed with, as createWebhookConfig
// returns it.
func (s *Sim) PublicKeyPEM() string {
	der, _ := x509.MarshalPKIXPublicKey(&s.key.PublicKey)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// SetWebhook registers an endpoint, as createWebhookConfig does.
func (s *Sim) SetWebhook(url string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.webhooks = append(s.webhooks, url)
}

// Resend delivers a body again with a fresh signature.
func (s *Sim) Resend(d Delivery) int { return s.post(d.Body) }

// Sign signs body as the simulator signs webhooks.
func (s *Sim) Sign(body []byte) string {
	sum := sha256.Sum256(body)
	sig, _ := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, sum[:])
	return base64.StdEncoding.EncodeToString(sig)
}

var opFieldRE = regexp.MustCompile(`\{\s*([A-Za-z0-9_]+)`)

func (s *Sim) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/graphql" {
		http.Error(w, `{"errors":[{"message":"not found"}]}`, http.StatusNotFound)
		return
	}
	if r.Method != http.MethodPost {
		http.Error(w, `{"errors":[{"message":"use POST"}]}`, http.StatusMethodNotAllowed)
		return
	}
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	s.mu.Lock()
	ok := s.apiKeys[tok]
	s.mu.Unlock()
	if !ok {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"errors":[{"message":"invalid API key"}]}`))
		return
	}
	var in struct {
		Query         string         `json:"query"`
		OperationName string         `json:"operationName"`
		Variables     map[string]any `json:"variables"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil {
		http.Error(w, `{"errors":[{"message":"body must be {query, variables}"}]}`, http.StatusBadRequest)
		return
	}
	field := ""
	if m := opFieldRE.FindStringSubmatch(in.Query); m != nil {
		field = m[1]
	}
	s.mu.Lock()
	s.calls[field]++
	s.callTimes[field] = append(s.callTimes[field], time.Now())
	late, isLate := s.late[field]
	delete(s.late, field)
	status, retryAfter := 0, s.retryAfter
	if len(s.failNext) > 0 {
		status, s.failNext = s.failNext[0], s.failNext[1:]
	}
	s.mu.Unlock()
	if status != 0 {
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"errors":[{"message":"simulated failure"}]}`))
		return
	}
	resp := s.schema.Exec(context.WithoutCancel(r.Context()), in.Query, in.OperationName, in.Variables)
	if isLate {
		time.Sleep(late) // the work is done; the answer is late
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

// eventLocked queues a signed webhook to every endpoint; s.mu is held.
func (s *Sim) eventLocked(event string, data map[string]any) {
	body := s.eventBodyLocked(event, data)
	if body == nil {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.post(body)
	}()
}

// eventBodyLocked builds a webhook body; nil when none is to be sent.
func (s *Sim) eventBodyLocked(event string, data map[string]any) []byte {
	if s.closed || len(s.webhooks) == 0 {
		return nil
	}
	s.seq++
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	body, _ := json.Marshal(map[string]any{"id": "evt_" + hex.EncodeToString(b), "event": event, "data": data})
	return body
}

func (s *Sim) post(body []byte) int {
	s.mu.Lock()
	urls := append([]string(nil), s.webhooks...)
	s.mu.Unlock()
	status := 0
	for _, u := range urls {
		req, err := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
		if err != nil {
			continue
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("x-tuuthfairy-signature", s.Sign(body))
		c := &http.Client{Timeout: 10 * time.Second}
		if resp, err := c.Do(req); err == nil {
			status = resp.StatusCode
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		s.mu.Lock()
		s.sent = append(s.sent, Delivery{Body: body, Header: req.Header.Clone(), Status: status})
		s.mu.Unlock()
	}
	return status
}

func newID(prefix string) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// ---- resolvers ----

type resolver struct{ s *Sim }

type websiteR struct {
	ID     graphql.ID
	Has2FA bool
	Name   string
	URL    string
}

type payerR struct {
	ID      graphql.ID
	Name    string
	Website *websiteR
}

type providerR struct {
	ProviderID graphql.ID
	Name       *string
	NPI        string
}

type connectionR struct {
	ID           graphql.ID
	DatasourceID graphql.ID
	Status       string
	Providers    []providerR
}

type connectionResultR struct {
	ID     graphql.ID
	Status string
}

type userErrorR struct {
	Type    string
	Message string
	Field   *string
}

func (r *resolver) Payers() []payerR {
	s := r.s
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []payerR
	for _, p := range s.payers {
		pr := payerR{ID: graphql.ID(p.ID), Name: p.Name}
		if w := s.websites[p.WebsiteID]; w != nil {
			pr.Website = &websiteR{ID: graphql.ID(w.ID), Has2FA: w.Has2FA, Name: w.Name, URL: w.URL}
		}
		out = append(out, pr)
	}
	return out
}

// advance moves a connection along as a portal login would, on a read;
// s.mu is held.
func (s *Sim) advance(c *conn) {
	if c.Status != AuthInProgress {
		return
	}
	switch {
	case c.badLogin:
		c.Status = AuthFailed
		s.eventLocked("datasource_disconnected", map[string]any{"connectionId": c.ID, "status": c.Status})
	case s.websites[c.WebsiteID].Has2FA && len(c.Confirmed) == 0:
		c.Status = Auth2FACode
		s.eventLocked("datasource_waiting_2fa", map[string]any{"connectionId": c.ID, "status": c.Status})
	default:
		c.Status = Connected
		s.eventLocked("datasource_connected", map[string]any{"connectionId": c.ID, "status": c.Status})
	}
}

func (s *Sim) connView(c *conn) connectionR {
	out := connectionR{ID: graphql.ID(c.ID), DatasourceID: graphql.ID(c.WebsiteID), Status: c.Status, Providers: []providerR{}}
	for i, n := range c.NPIs {
		name := "Provider " + n
		out.Providers = append(out.Providers, providerR{ProviderID: graphql.ID(c.ID + "-" + string(rune('a'+i))), Name: &name, NPI: n})
	}
	return out
}

func (r *resolver) Connection(args struct{ ID graphql.ID }) *connectionR {
	s := r.s
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.conns[string(args.ID)]
	if c == nil {
		return nil
	}
	s.advance(c)
	v := s.connView(c)
	return &v
}

func (r *resolver) Connections() []connectionR {
	s := r.s
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []connectionR{}
	for _, id := range s.connOrder {
		c := s.conns[id]
		s.advance(c)
		out = append(out, s.connView(c))
	}
	return out
}

type connectInput struct {
	Input struct {
		WebsiteID   graphql.ID
		Provider    struct{ NPI string }
		Credentials struct{ Username, Password string }
	}
}

type connectPayload struct {
	Result     *connectionResultR
	UserErrors []userErrorR
}

var npiRE = regexp.MustCompile(`^[0-9]{10}$`)

func field(s string) *string { return &s }

func (r *resolver) ConnectDatasource(args connectInput) connectPayload {
	s := r.s
	in := args.Input
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.websites[string(in.WebsiteID)] == nil {
		return connectPayload{UserErrors: []userErrorR{{Type: "invalid_input", Message: "unknown websiteId; query payers for supported websites", Field: field("websiteId")}}}
	}
	if !npiRE.MatchString(in.Provider.NPI) {
		return connectPayload{UserErrors: []userErrorR{{Type: "invalid_input", Message: "provider npi must be 10 digits", Field: field("provider.npi")}}}
	}
	if in.Credentials.Username == "" || in.Credentials.Password == "" {
		return connectPayload{UserErrors: []userErrorR{{Type: "invalid_input", Message: "credentials are required", Field: field("credentials")}}}
	}
	c := &conn{ID: newID("conn_"), WebsiteID: string(in.WebsiteID), Status: AuthInProgress, NPIs: []string{in.Provider.NPI},
		Username: in.Credentials.Username, badLogin: s.badPasswords[in.Credentials.Password]}
	s.conns[c.ID] = c
	s.connOrder = append(s.connOrder, c.ID)
	return connectPayload{Result: &connectionResultR{ID: graphql.ID(c.ID), Status: c.Status}, UserErrors: []userErrorR{}}
}

type addProviderPayload struct {
	Success    bool
	UserErrors []userErrorR
}

func (r *resolver) AddProviderToConnection(args struct {
	ConnectionID graphql.ID
	Provider     struct{ NPI string }
}) addProviderPayload {
	s := r.s
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.conns[string(args.ConnectionID)]
	switch {
	case c == nil:
		return addProviderPayload{UserErrors: []userErrorR{{Type: "not_found", Message: "no such connection", Field: field("connectionId")}}}
	case !npiRE.MatchString(args.Provider.NPI):
		return addProviderPayload{UserErrors: []userErrorR{{Type: "invalid_input", Message: "provider npi must be 10 digits", Field: field("provider.npi")}}}
	}
	for _, n := range c.NPIs {
		if n == args.Provider.NPI {
			return addProviderPayload{Success: true, UserErrors: []userErrorR{}}
		}
	}
	c.NPIs = append(c.NPIs, args.Provider.NPI)
	sort.Strings(c.NPIs)
	return addProviderPayload{Success: true, UserErrors: []userErrorR{}}
}

func (r *resolver) ConfirmDatasource2FaCode(args struct {
	ID          graphql.ID
	ConfirmCode string
}) connectPayload {
	s := r.s
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.conns[string(args.ID)]
	if c == nil {
		return connectPayload{UserErrors: []userErrorR{{Type: "not_found", Message: "no such connection", Field: field("id")}}}
	}
	if c.Status != Auth2FACode {
		return connectPayload{Result: &connectionResultR{ID: graphql.ID(c.ID), Status: c.Status},
			UserErrors: []userErrorR{{Type: "invalid_state", Message: "the connection is not waiting for a code"}}}
	}
	c.Confirmed = append(c.Confirmed, args.ConfirmCode)
	if args.ConfirmCode != s.code {
		return connectPayload{Result: &connectionResultR{ID: graphql.ID(c.ID), Status: c.Status},
			UserErrors: []userErrorR{{Type: "invalid_code", Message: "the code was not accepted", Field: field("confirmCode")}}}
	}
	c.Status = AuthInProgress
	return connectPayload{Result: &connectionResultR{ID: graphql.ID(c.ID), Status: c.Status}, UserErrors: []userErrorR{}}
}

type patientIn struct {
	FirstName, LastName string
	MemberID            *string
	Dob                 string
}

type eligibilityInput struct {
	Input struct {
		Patient    patientIn
		Subscriber *patientIn
		Provider   struct{ NPI string }
		PayerID    string
	}
}

type eligRefR struct{ ID graphql.ID }

type eligPayload struct {
	Result     *eligRefR
	UserErrors []userErrorR
}

var dobRE = regexp.MustCompile(`^(0[1-9]|1[0-2])/(0[1-9]|[12][0-9]|3[01])/[0-9]{4}$`)

func (r *resolver) RequestEligibility(args eligibilityInput) eligPayload {
	s := r.s
	in := args.Input
	bad := func(f, msg string) eligPayload {
		return eligPayload{UserErrors: []userErrorR{{Type: "invalid_input", Message: msg, Field: field(f)}}}
	}
	switch {
	case in.Patient.FirstName == "" || in.Patient.LastName == "":
		return bad("patient", "first and last name are required")
	case !dobRE.MatchString(in.Patient.Dob):
		return bad("patient.dob", "dob must be MM/DD/YYYY")
	case in.Patient.MemberID == nil || *in.Patient.MemberID == "":
		return bad("patient.memberId", "a member id, subscriber id or SSN is required")
	case !npiRE.MatchString(in.Provider.NPI):
		return bad("provider.npi", "NPI must be 10 digits")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var p *payer
	for _, x := range s.payers {
		if x.ID == in.PayerID {
			p = x
		}
	}
	if p == nil {
		return bad("payerId", "unknown payerId")
	}
	sc := s.scripts[*in.Patient.MemberID]
	e := &elig{ID: newID("elig_"), PayerID: p.ID, MemberID: *in.Patient.MemberID, NPI: in.Provider.NPI, Status: "requested", left: sc.PendingPolls}
	if e.left == 0 {
		e.left = 1
	}
	// A datasource linked by NPI that is not connected cannot be used.
	for _, c := range s.conns {
		if c.WebsiteID == p.WebsiteID && contains(c.NPIs, in.Provider.NPI) && c.Status != Connected {
			sc = Script{Failure: "datasource_unavailable"}
		}
	}
	e.Failure, e.Active, e.overtake = sc.Failure, !sc.Inactive, sc.ResolveDuringRead
	s.eligs[e.ID] = e
	s.eventLocked("eligibility_requested", map[string]any{"eligibilityId": e.ID, "status": e.Status})
	return eligPayload{Result: &eligRefR{ID: graphql.ID(e.ID)}, UserErrors: []userErrorR{}}
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

type planR struct {
	Name, GroupNumber, EffectiveDate, TerminationDate *string
}

type benefitR struct {
	Category            string
	ServiceType         *string
	Network             *string
	Coinsurance         *float64
	Deductible          *float64
	DeductibleRemaining *float64
	Maximum             *float64
	MaximumRemaining    *float64
}

type eligibilityR struct {
	ID            graphql.ID
	Status        string
	PayerID       string
	Active        *bool
	FailureReason *string
	Plan          *planR
	Benefits      []benefitR
}

func fp(v float64) *float64 { return &v }

func (r *resolver) Eligibility(ctx context.Context, args struct{ ID graphql.ID }) *eligibilityR {
	s := r.s
	s.mu.Lock()
	e := s.eligs[string(args.ID)]
	if e == nil {
		s.mu.Unlock()
		return nil
	}
	status := e.Status // as read, before any change this read makes
	var overtaking []byte
	if e.Status == "requested" {
		e.left--
		if e.left < 0 || e.overtake {
			event := "eligibility_ok"
			e.Status = "ok"
			if e.Failure != "" {
				event, e.Status = "eligibility_failed", "failed"
			}
			data := map[string]any{"eligibilityId": e.ID, "status": e.Status}
			if e.overtake {
				overtaking = s.eventBodyLocked(event, data)
			} else {
				s.eventLocked(event, data)
				status = e.Status
			}
		}
	}
	out := s.eligibilityLocked(e, status)
	s.mu.Unlock()
	if overtaking != nil {
		s.post(overtaking) // synchronous: answered before the read is
	}
	return out
}

// eligibilityLocked is e as a read answers it, with status.
func (s *Sim) eligibilityLocked(e *elig, status string) *eligibilityR {
	out := &eligibilityR{ID: graphql.ID(e.ID), Status: status, PayerID: e.PayerID, Benefits: []benefitR{}}
	switch status {
	case "failed":
		out.FailureReason = field(e.Failure)
	case "ok":
		active := e.Active
		out.Active = &active
		year := time.Now().Format("2006")
		out.Plan = &planR{Name: field("Dental PPO"), GroupNumber: field("D-1001"), EffectiveDate: field(year + "-01-01"), TerminationDate: field(year + "-12-31")}
		if active {
			out.Benefits = []benefitR{
				{Category: "Preventive", ServiceType: field("23"), Network: field("in"), Coinsurance: fp(0), Deductible: fp(50), DeductibleRemaining: fp(0), Maximum: fp(1500), MaximumRemaining: fp(1200)},
				{Category: "Basic", ServiceType: field("25"), Network: field("in"), Coinsurance: fp(0.2), Deductible: fp(50), DeductibleRemaining: fp(0), Maximum: fp(1500), MaximumRemaining: fp(1200)},
				{Category: "Major", ServiceType: field("26"), Network: field("out"), Coinsurance: fp(0.5)},
			}
		}
	}
	return out
}

type webhookConfigR struct {
	ID        graphql.ID
	Endpoint  string
	PublicKey string
}

func (r *resolver) CreateWebhookConfig(args struct {
	Input struct{ Name, Endpoint string }
}) webhookConfigR {
	r.s.SetWebhook(args.Input.Endpoint)
	return webhookConfigR{ID: graphql.ID(newID("wh_")), Endpoint: args.Input.Endpoint, PublicKey: r.s.PublicKeyPEM()}
}
