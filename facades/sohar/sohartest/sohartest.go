// Package sohartest is a local simulator of the Sohar eligibility API, on
// 127.0.0.1, for tests and for developing without Sohar credentials. It
// speaks the documented wire format:
//
//	POST /oauth/token                     {"client_id","client_secret"} -> {"access_token","token_type":"Bearer","expires_in"}
//	POST /v2/verifications                create a verification -> 201 {"verificationId","id"}
//	GET  /v2/verifications/{verificationId}  the verification, its status and benefits
//
// and delivers verification.pending / verification.updated webhooks
// (sandbox.* with Options.Sandbox) signed the way Svix signs them
// (svix-id, svix-timestamp, svix-signature: v1,<base64 HMAC-SHA256 of
// "id.timestamp.body"> keyed with the whsec_ secret).
//
// Every documented status can be scripted per member id: complete.eligible,
// complete.ineligible (with statusReason INACTIVE or NON_COVERED),
// error.member.id, error.member.name, error.member.dob, error.payer,
// error.payer.npi, and pending (resolved when the test calls Resolve).
// Failures are scripted too: tokens that expire after N calls, revoked
// clients, 5xx and 429 answers (with a Retry-After), answers slower than
// the client waits, and calls carried out but answered late.
package sohartest

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/p2pserver/p2pserver/internal/loopback"
)

// The statuses Sohar documents.
const (
	StatusPending           = "pending"
	StatusEligible          = "complete.eligible"
	StatusIneligible        = "complete.ineligible"
	StatusErrorMemberID     = "error.member.id"
	StatusErrorMemberName   = "error.member.name"
	StatusErrorMemberDOB    = "error.member.dob"
	StatusErrorPayer        = "error.payer"
	StatusErrorPayerNPI     = "error.payer.npi"
	ReasonInactive          = "INACTIVE"
	ReasonNonCovered        = "NON_COVERED"
	ReasonContactPayerReqd  = "CONTACT_PAYER_REQUIRED"
	defaultTokenLifetimeSec = 3600
)

// Options configure a simulator.
type Options struct {
	// Addr is the listen address; default 127.0.0.1:0.
	Addr string
	// Sandbox makes webhooks carry the sandbox.* event names.
	Sandbox bool
}

// Script is what the simulator answers for one member id.
type Script struct {
	// Status is the final status (default complete.eligible).
	Status string
	// Reason is statusReason (INACTIVE, NON_COVERED) for complete.ineligible.
	Reason string
	// Pending keeps the verification pending (and sends
	// verification.pending) until Resolve is called.
	Pending bool
	// Benefits replace the default benefits of an eligible member.
	Benefits []Benefit
	// ResolveAfter, with Pending, resolves the verification by itself on
	// that many GETs of it (0: only Resolve does).
	ResolveAfter int
	// ResolveDuringGet, with Pending, resolves the verification while
	// that GET of it (counting from 1) is under way: the GET read the
	// verification before the change, so it answers pending, but the
	// verification.updated webhook is delivered, and answered, before that
	// answer is sent. It is the order a client sees when Sohar's webhook
	// overtakes a Get Verification call in flight.
	ResolveDuringGet int
}

// Benefit is one entry of a verification's "benefits".
type Benefit struct {
	NetworkStatus string   `json:"networkStatus"`
	Tier          *int     `json:"tier"`
	Copay         *float64 `json:"copay"`
	Coinsurance   *float64 `json:"coinsurance"`
	Deductible    *Accum   `json:"deductible,omitempty"`
	OutOfPocket   *Accum   `json:"outOfPocket,omitempty"`
}

// Accum is a total and what remains of it.
type Accum struct {
	Total             float64 `json:"total"`
	Remaining         float64 `json:"remaining"`
	CoverageLevelCode string  `json:"coverageLevelCode,omitempty"`
}

// DefaultBenefits are the benefits of an eligible member with no script.
func DefaultBenefits() []Benefit {
	f := func(v float64) *float64 { return &v }
	return []Benefit{
		{NetworkStatus: "inn", Copay: f(30), Coinsurance: f(0.1),
			Deductible: &Accum{Total: 1000, Remaining: 847.56, CoverageLevelCode: "IND"}, OutOfPocket: &Accum{Total: 10000, Remaining: 5103.21}},
		{NetworkStatus: "oon", Copay: f(60), Coinsurance: f(0.3),
			Deductible: &Accum{Total: 3000, Remaining: 3000, CoverageLevelCode: "IND"}, OutOfPocket: &Accum{Total: 20000, Remaining: 20000}},
	}
}

// Verification is a verification as the simulator holds it.
type Verification struct {
	VerificationID string
	ID             string
	Status         string
	Reason         string
	Input          CreateInput
	Benefits       []Benefit
	Created        time.Time
	pending        bool
	final          Script
	gets           int
}

// CreateInput is the body of POST /v2/verifications.
type CreateInput struct {
	Patient struct {
		FirstName   string `json:"firstName"`
		LastName    string `json:"lastName"`
		DateOfBirth string `json:"dateOfBirth"`
		State       string `json:"state"`
		MemberID    string `json:"memberId"`
	} `json:"patient"`
	PayerID            string `json:"payerId"`
	PlaceOfServiceCode string `json:"placeOfServiceCode"`
	SpecialtyCode      string `json:"specialtyCode"`
	ID                 string `json:"id,omitempty"`
	Subscriber         *struct {
		FirstName   string `json:"firstName"`
		LastName    string `json:"lastName"`
		DateOfBirth string `json:"dateOfBirth"`
	} `json:"subscriber,omitempty"`
}

// Sim is a running simulator.
type Sim struct {
	// URL is the base URL (http://127.0.0.1:port).
	URL string
	srv *httptest.Server
	opt Options

	mu            sync.Mutex
	clients       map[string]string // id -> secret
	tokens        map[string]*token
	scripts       map[string]Script
	verifications map[string]*Verification
	order         []string
	calls         map[string]int
	callTimes     map[string][]time.Time
	failNext      []int
	retryAfter    string
	late          map[string]time.Duration
	delay         time.Duration
	tokenUses     int // 0 = unlimited
	webhookURL    string
	webhookSecret []byte
	secretText    string
	sent          []Delivery
	wg            sync.WaitGroup
	closed        bool
}

type token struct {
	client string
	uses   int
	exp    time.Time
}

// Delivery is a webhook the simulator sent.
type Delivery struct {
	ID     string
	Body   []byte
	Header http.Header
	Status int // the receiver's answer, 0 if it could not be reached
}

// New starts a simulator. Close it when done.
func New(opt Options) (*Sim, error) {
	s := &Sim{opt: opt, clients: map[string]string{}, tokens: map[string]*token{}, scripts: map[string]Script{},
		verifications: map[string]*Verification{}, calls: map[string]int{}, callTimes: map[string][]time.Time{}, late: map[string]time.Duration{}}
	var err error
	if s.srv, err = loopback.Serve(opt.Addr, http.HandlerFunc(s.serve)); err != nil {
		return nil, err
	}
	s.URL = s.srv.URL
	s.secretText, s.webhookSecret = NewWebhookSecret()
	return s, nil
}

// Close stops the server and waits for webhook deliveries under way.
func (s *Sim) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.wg.Wait()
	s.srv.Close()
}

// NewWebhookSecret returns a Svix-style secret "whsec_<base64>" and its key.
func NewWebhookSecret() (string, []byte) {
	key := make([]byte, 24)
	_, _ = rand.Read(key)
	return "whsec_" + base64.StdEncoding.EncodeToString(key), key
}

// AddClient registers API credentials.
func (s *Sim) AddClient(id, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients[id] = secret
}

// RevokeClient removes a client: its tokens stop working and it can get no
// new ones.
func (s *Sim) RevokeClient(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.clients, id)
	for k, t := range s.tokens {
		if t.client == id {
			delete(s.tokens, k)
		}
	}
}

// ExpireTokensAfter makes each token stop working after n API calls (0:
// never), as if it had expired.
func (s *Sim) ExpireTokensAfter(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokenUses = n
}

// Script sets what a member id gets.
func (s *Sim) Script(memberID string, sc Script) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts[memberID] = sc
}

// FailNext makes the next API calls (not token calls) answer these HTTP
// statuses, one each, in order.
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

// AnswerLate makes the next call "METHOD /path-pattern" (as Calls counts
// them) be carried out at once and answered only d later: a client that
// gives up sooner sees a timeout, though Sohar did the work (and sends its
// webhooks).
func (s *Sim) AnswerLate(key string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.late[key] = d
}

// CallTimes returns when each request "METHOD /path-pattern" arrived.
func (s *Sim) CallTimes(key string) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.callTimes[key]...)
}

// Delay makes every API answer wait d first (to exceed a client timeout).
func (s *Sim) Delay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// SetWebhook makes the simulator deliver events to url, signed with the
// simulator's secret (WebhookSecret).
func (s *Sim) SetWebhook(url string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.webhookURL = url
}

// WebhookSecret is the whsec_ secret the webhooks are signed with; give it
// to the receiver.
func (s *Sim) WebhookSecret() string { return s.secretText }

// Calls returns how many requests "METHOD /path-pattern" the simulator
// served ("POST /v2/verifications", "GET /v2/verifications/{id}",
// "POST /oauth/token").
func (s *Sim) Calls(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[key]
}

// Deliveries returns the webhooks sent so far.
func (s *Sim) Deliveries() []Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Delivery(nil), s.sent...)
}

// Verifications returns the verifications created, oldest first.
func (s *Sim) Verifications() []Verification {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Verification
	for _, id := range s.order {
		out = append(out, *s.verifications[id])
	}
	return out
}

// Resolve ends a pending verification with its scripted status and sends
// verification.updated. It reports false for an unknown or resolved id.
func (s *Sim) Resolve(verificationID string) bool {
	s.mu.Lock()
	v := s.verifications[verificationID]
	if v == nil || !v.pending {
		s.mu.Unlock()
		return false
	}
	s.finish(v)
	body := s.event("updated", v)
	s.mu.Unlock()
	s.deliver(body)
	return true
}

// Redeliver sends a delivery again with the same svix-id, as Svix does on
// a retry.
func (s *Sim) Redeliver(d Delivery) int {
	return s.send(d.ID, d.Body)
}

func (s *Sim) finish(v *Verification) {
	v.pending = false
	v.Status, v.Reason = v.final.Status, v.final.Reason
	if v.Status == "" {
		v.Status = StatusEligible
	}
	if v.Status == StatusEligible {
		v.Benefits = v.final.Benefits
		if v.Benefits == nil {
			v.Benefits = DefaultBenefits()
		}
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func apiError(w http.ResponseWriter, status int, code, param, msg string) {
	writeJSON(w, status, map[string]string{"error": code, "param": param, "message": msg})
}

var verificationPath = regexp.MustCompile(`^/v2/verifications/([^/]+)$`)

func (s *Sim) serve(w http.ResponseWriter, r *http.Request) {
	key := r.Method + " " + r.URL.Path
	if verificationPath.MatchString(r.URL.Path) {
		key = r.Method + " /v2/verifications/{id}"
	}
	s.mu.Lock()
	s.calls[key]++
	s.callTimes[key] = append(s.callTimes[key], time.Now())
	delay := s.delay
	late, isLate := s.late[key]
	delete(s.late, key)
	s.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	if isLate {
		rec := httptest.NewRecorder()
		s.serveAPI(rec, r)
		time.Sleep(late) // the work is done; the answer is late
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
		return
	}
	s.serveAPI(w, r)
}

// serveAPI answers one request.
func (s *Sim) serveAPI(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/oauth/token" && r.Method == http.MethodPost:
		s.token(w, r)
		return
	case r.URL.Path == "/oauth/token":
		apiError(w, http.StatusMethodNotAllowed, "invalid_request_error", "", "use POST")
		return
	}
	if st := s.nextFailure(); st != 0 {
		s.mu.Lock()
		if s.retryAfter != "" {
			w.Header().Set("Retry-After", s.retryAfter)
		}
		s.mu.Unlock()
		apiError(w, st, "api_error", "", "simulated failure")
		return
	}
	if !s.authorized(r) {
		apiError(w, http.StatusUnauthorized, "authentication_error", "", "invalid or expired token")
		return
	}
	switch {
	case r.URL.Path == "/v2/verifications" && r.Method == http.MethodPost:
		s.create(w, r)
	case verificationPath.MatchString(r.URL.Path) && r.Method == http.MethodGet:
		s.get(w, verificationPath.FindStringSubmatch(r.URL.Path)[1])
	default:
		apiError(w, http.StatusNotFound, "invalid_request_error", "", "no such route")
	}
}

func (s *Sim) nextFailure() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failNext) == 0 {
		return 0
	}
	st := s.failNext[0]
	s.failNext = s.failNext[1:]
	return st
}

func (s *Sim) token(w http.ResponseWriter, r *http.Request) {
	var in struct {
		ClientID     string `json:"client_id"`
		ClientSecret string `json:"client_secret"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&in); err != nil || in.ClientID == "" || in.ClientSecret == "" {
		apiError(w, http.StatusBadRequest, "invalid_request_error", "client_id", "client_id and client_secret are required")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sec, ok := s.clients[in.ClientID]; !ok || !hmac.Equal([]byte(sec), []byte(in.ClientSecret)) {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client", "message": "unknown client or wrong secret"})
		return
	}
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	tok := hex.EncodeToString(b)
	s.tokens[tok] = &token{client: in.ClientID, exp: time.Now().Add(defaultTokenLifetimeSec * time.Second)}
	writeJSON(w, http.StatusOK, map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": defaultTokenLifetimeSec})
}

func (s *Sim) authorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tokens[tok]
	if t == nil || time.Now().After(t.exp) {
		return false
	}
	if s.tokenUses > 0 && t.uses >= s.tokenUses {
		return false
	}
	t.uses++
	return true
}

var (
	dobRE   = regexp.MustCompile(`^(0[1-9]|1[0-2])/(0[1-9]|[12][0-9]|3[01])/[0-9]{4}$`)
	stateRE = regexp.MustCompile(`^[A-Z]{2}$`)
	posRE   = regexp.MustCompile(`^[0-9]{2}$`)
)

// Specialties are the documented specialtyCode values.
var Specialties = []string{"ABA", "IOP", "OCT", "PHT", "PRC", "PCH", "PSY", "SLP", "SUD", "UGC", "WMT"}

func (s *Sim) create(w http.ResponseWriter, r *http.Request) {
	var in CreateInput
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		apiError(w, http.StatusBadRequest, "invalid_request_error", "", "body is not the documented JSON: "+err.Error())
		return
	}
	p := in.Patient
	checks := []struct {
		ok    bool
		param string
	}{
		{p.FirstName != "", "patient.firstName"},
		{p.LastName != "", "patient.lastName"},
		{dobRE.MatchString(p.DateOfBirth), "patient.dateOfBirth"},
		{stateRE.MatchString(p.State), "patient.state"},
		{p.MemberID != "", "patient.memberId"},
		{in.PayerID != "", "payerId"},
		{posRE.MatchString(in.PlaceOfServiceCode), "placeOfServiceCode"},
		{contains(Specialties, in.SpecialtyCode), "specialtyCode"},
		{len(in.ID) <= 45, "id"},
	}
	for _, c := range checks {
		if !c.ok {
			apiError(w, http.StatusBadRequest, "invalid_request_error", c.param, c.param+" is missing or invalid")
			return
		}
	}
	s.mu.Lock()
	sc := s.scripts[p.MemberID]
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	vid := fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	v := &Verification{VerificationID: vid, ID: in.ID, Input: in, Created: time.Now().UTC(), final: sc, pending: true, Status: StatusPending}
	s.verifications[vid] = v
	s.order = append(s.order, vid)
	var body []byte
	if sc.Pending {
		body = s.event("pending", v)
	} else {
		s.finish(v)
		body = s.event("updated", v)
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{"verificationId": vid, "id": nullable(in.ID)})
	// Sohar calls webhooks after answering; so does the simulator.
	s.mu.Lock()
	if !s.closed {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.deliver(body)
		}()
	}
	s.mu.Unlock()
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func (s *Sim) get(w http.ResponseWriter, id string) {
	s.mu.Lock()
	v := s.verifications[id]
	var out map[string]any
	var event []byte
	overtaken := false
	if v != nil {
		v.gets++
		out = s.view(v)
		switch {
		case v.pending && v.final.ResolveDuringGet > 0 && v.gets == v.final.ResolveDuringGet:
			s.finish(v)
			event, overtaken = s.event("updated", v), true
		case v.pending && v.final.ResolveAfter > 0 && v.gets >= v.final.ResolveAfter:
			s.finish(v)
			event = s.event("updated", v)
			out = s.view(v)
		}
	}
	if event != nil && !overtaken && !s.closed {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.deliver(event)
		}()
	}
	s.mu.Unlock()
	if v == nil {
		apiError(w, http.StatusNotFound, "invalid_request_error", "verificationId", "no such verification")
		return
	}
	if overtaken {
		s.deliver(event) // synchronous: answered before the GET is
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Sim) view(v *Verification) map[string]any {
	in := v.Input
	out := map[string]any{
		"verificationId":     v.VerificationID,
		"created":            v.Created.Format("2006-01-02T15:04:05.000Z"),
		"status":             v.Status,
		"id":                 nullable(v.ID),
		"placeOfServiceCode": in.PlaceOfServiceCode,
		"specialtyCode":      in.SpecialtyCode,
		"relatedEntities":    []any{},
		"patient": map[string]any{
			"firstName": strings.ToUpper(in.Patient.FirstName), "lastName": strings.ToUpper(in.Patient.LastName),
			"dateOfBirth": in.Patient.DateOfBirth, "memberId": in.Patient.MemberID, "subscriberRelationshipCode": "18",
			"address": map[string]any{"state": in.Patient.State},
		},
		"payer": map[string]any{"id": in.PayerID, "name": "Payer " + in.PayerID},
	}
	if v.Reason != "" {
		out["statusReason"] = v.Reason
	}
	if strings.HasPrefix(v.Status, "complete.") {
		year := strconv.Itoa(time.Now().Year())
		out["plan"] = map[string]any{"name": "OPEN CHOICE", "insuranceTypeCode": "HM", "startDate": "01/01/" + year, "endDate": "12/31/" + year}
		out["group"] = map[string]any{"number": "123456", "name": "ACME CORPORATION"}
		out["benefits"] = v.Benefits
		if v.Benefits == nil {
			out["benefits"] = []any{}
		}
	}
	return out
}

// event builds a webhook body; the caller holds s.mu.
func (s *Sim) event(kind string, v *Verification) []byte {
	name := "verification." + kind
	if s.opt.Sandbox {
		name = "sandbox." + name
	}
	b, _ := json.Marshal(map[string]any{"event": name, "verificationId": v.VerificationID, "id": nullable(v.ID), "status": v.Status})
	return b
}

func (s *Sim) deliver(body []byte) {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	s.send("msg_"+hex.EncodeToString(b), body)
}

// send posts one delivery synchronously, so tests see its effect once the
// call that caused it returned; the answer is recorded.
func (s *Sim) send(id string, body []byte) int {
	s.mu.Lock()
	url, closed := s.webhookURL, s.closed
	if url == "" || closed {
		s.mu.Unlock()
		return 0
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	h := SignHeaders(s.webhookSecret, id, time.Now(), body)
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(string(body)))
	if err != nil {
		return 0
	}
	req.Header = h.Clone()
	req.Header.Set("Content-Type", "application/json")
	status := 0
	client := &http.Client{Timeout: 10 * time.Second}
	if resp, err := client.Do(req); err == nil {
		status = resp.StatusCode
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	s.mu.Lock()
	s.sent = append(s.sent, Delivery{ID: id, Body: body, Header: h, Status: status})
	s.mu.Unlock()
	return status
}

// SignHeaders returns the Svix headers for a delivery of body.
func SignHeaders(key []byte, id string, at time.Time, body []byte) http.Header {
	ts := strconv.FormatInt(at.Unix(), 10)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	h := http.Header{}
	h.Set("svix-id", id)
	h.Set("svix-timestamp", ts)
	h.Set("svix-signature", "v1,"+base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	return h
}
