// Package verifytreatmenttest is a local simulator of the VerifyTreatment
// API on 127.0.0.1, for tests and for developing without VerifyTreatment
// credentials.
//
// What VerifyTreatment documents, it speaks as documented: OAuth 2.0 with
// the authorization code (GET /oauth/authorize redirecting with code and
// state, or error=access_denied), client credentials and refresh token
// grants at POST /oauth/token (form fields grant_type, client_id,
// client_secret, code, redirect_uri, refresh_token, scope; answer
// token_type "bearer", id, access_token, refresh_token, expires_at,
// scopes); bearer tokens with 401 when missing, invalid or expired; VOBs
// created at POST /vobs with the documented fields (first_name,
// last_name, member_id, payer_id, date_of_birth as MM/DD/YYYY or
// YYYY-MM-DD, client_type, subscriber_relation SR01..SR05, gender, facility,
// ...); payers (GET /payers with q, limit, skip), facilities
// (GET /facilities), and each payer's required fields.
//
// Where the documentation names an endpoint or a field but not its exact
// form, the simulator fixes one, and the connector follows it; these
// choices are listed in the README: the payer configuration at
// GET /payers/{payer_id}/configuration answering {"payer_id",
// "required_fields": [...]}; View VOB at GET /vobs/{_id}; Update VOB at
// PUT /vobs/{_id} with the documented fields and "action": "save" |
// "verify"; Re-Verify VOB, documented as taking the VOB's "_id", at
// POST /vobs/verify with {"_id"} (the path VerifyTreatment's own Node
// client, verifytx-node, sends it to); List VOB at GET /vobs with the
// documented q (free text: names and member id), sort (-created_at),
// skip and limit; list answers {"data": [...], "total": n}; a VOB's "status"
// (pending, verified, error), "coverage" (active, inactive, unavailable),
// "error" {"code","message"} and "benefits" {"in_network": [...],
// "out_of_network": [...]}.
//
// Verification is asynchronous: a VOB is pending until it has been read
// Script.PendingPolls times, then takes its scripted result.
package verifytreatmenttest

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/p2pserver/p2pserver/internal/loopback"
)

// Options configure a simulator.
type Options struct {
	// Addr is the listen address; default 127.0.0.1:0.
	Addr string
}

// Payer is a payer of GET /payers with its required fields.
type Payer struct {
	ID             string   `json:"_id"`
	Name           string   `json:"name"`
	RequiredFields []string `json:"-"`
}

// Script is what a member id gets.
type Script struct {
	// Coverage is active (default), inactive or unavailable.
	Coverage string
	// Error, when set, fails the VOB with this error code
	// (patient_not_found, invalid_member_id, invalid_dob, invalid_name,
	// provider_not_on_file, payer_unavailable).
	Error string
	// PendingPolls is how many reads answer "pending" first (default 1).
	PendingPolls int
}

// VOB is a verification of benefits as the simulator holds it.
type VOB struct {
	Fields       map[string]string
	Status       string
	Coverage     string
	Error        string
	Reverified   int
	Updates      int
	pendingLeft  int
	script       Script
	CreatedAt    time.Time
	VerifiedAt   time.Time
	ID           string
	verification int
}

// Sim is a running simulator.
type Sim struct {
	URL string
	srv *httptest.Server

	mu          sync.Mutex
	clients     map[string]string
	codes       map[string]codeGrant
	access      map[string]*tok
	refresh     map[string]string // refresh token -> client
	payers      map[string]Payer
	facilities  []map[string]string
	scripts     map[string]Script
	vobs        map[string]*VOB
	order       []string
	calls       map[string]int
	callTimes   map[string][]time.Time
	failNext    []int
	retryAfter  string
	late        map[string]time.Duration
	delay       time.Duration
	tokenUses   int
	tokenTTL    time.Duration
	deny        bool
	refreshDead bool
}

type codeGrant struct{ client, redirect, scope string }

type tok struct {
	client string
	exp    time.Time
	uses   int
}

// New starts a simulator with two payers (vtx_aetna: first_name,
// last_name, date_of_birth, member_id required; vtx_cigna: also gender and
// subscriber_relation) and the account's default facility.
func New(opt Options) (*Sim, error) {
	s := &Sim{clients: map[string]string{}, codes: map[string]codeGrant{}, access: map[string]*tok{}, refresh: map[string]string{},
		payers: map[string]Payer{}, scripts: map[string]Script{}, vobs: map[string]*VOB{}, calls: map[string]int{},
		callTimes: map[string][]time.Time{}, late: map[string]time.Duration{},
		tokenTTL:   time.Hour,
		facilities: []map[string]string{{"_id": "ACCOUNT_DEFAULT", "name": "Main office"}, {"_id": "fac_2", "name": "North clinic"}}}
	s.AddPayer(Payer{ID: "vtx_aetna", Name: "Aetna", RequiredFields: []string{"first_name", "last_name", "date_of_birth", "member_id"}})
	s.AddPayer(Payer{ID: "vtx_cigna", Name: "Cigna", RequiredFields: []string{"first_name", "last_name", "date_of_birth", "member_id", "gender", "subscriber_relation"}})
	var err error
	if s.srv, err = loopback.Serve(opt.Addr, http.HandlerFunc(s.serve)); err != nil {
		return nil, err
	}
	s.URL = s.srv.URL
	return s, nil
}

// Close stops the simulator.
func (s *Sim) Close() { s.srv.Close() }

// AddClient registers client credentials.
func (s *Sim) AddClient(id, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients[id] = secret
}

// AddPayer adds or replaces a payer and its required fields.
func (s *Sim) AddPayer(p Payer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.payers[p.ID] = p
}

// Script sets what a member id gets.
func (s *Sim) Script(memberID string, sc Script) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts[memberID] = sc
}

// ExpireTokensAfter makes every access token stop working after n calls.
func (s *Sim) ExpireTokensAfter(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokenUses = n
}

// RevokeRefreshTokens makes every refresh token issued so far invalid.
func (s *Sim) RevokeRefreshTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refresh = map[string]string{}
	s.refreshDead = true
}

// RevokeClient removes a client and every token issued to it.
func (s *Sim) RevokeClient(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.clients, id)
	for k, t := range s.access {
		if t.client == id {
			delete(s.access, k)
		}
	}
	for k, c := range s.refresh {
		if c == id {
			delete(s.refresh, k)
		}
	}
}

// DenyAuthorization makes the authorization endpoint answer access_denied.
func (s *Sim) DenyAuthorization(deny bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deny = deny
}

// FailNext makes the next API calls answer these statuses, one each.
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

// AnswerLate makes the next call "METHOD /pattern" (as Calls counts them)
// be carried out at once and answered only d later: a client that gives
// up sooner sees a timeout, though the work was done.
func (s *Sim) AnswerLate(key string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.late[key] = d
}

// CallTimes returns when each request "METHOD /pattern" arrived.
func (s *Sim) CallTimes(key string) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.callTimes[key]...)
}

// Delay makes every API answer wait d first.
func (s *Sim) Delay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// Calls counts served requests by "METHOD /pattern" ("POST /vobs",
// "GET /vobs/{id}", "PUT /vobs/{id}", "POST /vobs/verify", "GET /vobs",
// "POST /oauth/token", "GET /payers/{id}/configuration").
func (s *Sim) Calls(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[key]
}

// TokenGrants counts token requests by grant_type.
func (s *Sim) TokenGrants(grant string) int { return s.Calls("grant " + grant) }

// VOBs returns copies of the VOBs created, oldest first.
func (s *Sim) VOBs() []VOB {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []VOB
	for _, id := range s.order {
		v := *s.vobs[id]
		v.Fields = cloneMap(v.Fields)
		out = append(out, v)
	}
	return out
}

func cloneMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, status int, code, msg string, extra ...any) {
	body := map[string]any{"error": code, "message": msg}
	for i := 0; i+1 < len(extra); i += 2 {
		body[extra[i].(string)] = extra[i+1]
	}
	writeJSON(w, status, body)
}

var (
	vobPath    = regexp.MustCompile(`^/vobs/([^/]+)$`)
	configPath = regexp.MustCompile(`^/payers/([^/]+)/configuration$`)
)

func (s *Sim) serve(w http.ResponseWriter, r *http.Request) {
	key := r.Method + " " + r.URL.Path
	switch {
	case r.URL.Path == "/vobs/verify" && r.Method == http.MethodPost:
	case vobPath.MatchString(r.URL.Path):
		key = r.Method + " /vobs/{id}"
	case configPath.MatchString(r.URL.Path):
		key = r.Method + " /payers/{id}/configuration"
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
	switch r.URL.Path {
	case "/oauth/authorize":
		s.authorize(w, r)
		return
	case "/oauth/token":
		if r.Method != http.MethodPost {
			fail(w, http.StatusMethodNotAllowed, "invalid_request", "use POST")
			return
		}
		s.token(w, r)
		return
	}
	if st := s.nextFailure(); st != 0 {
		s.mu.Lock()
		if s.retryAfter != "" {
			w.Header().Set("Retry-After", s.retryAfter)
		}
		s.mu.Unlock()
		fail(w, st, "server_error", "simulated failure")
		return
	}
	if !s.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		fail(w, http.StatusUnauthorized, "unauthorized", "access token missing, invalid or expired")
		return
	}
	switch {
	case r.URL.Path == "/payers" && r.Method == http.MethodGet:
		s.listPayers(w, r)
	case configPath.MatchString(r.URL.Path) && r.Method == http.MethodGet:
		s.configuration(w, configPath.FindStringSubmatch(r.URL.Path)[1])
	case r.URL.Path == "/facilities" && r.Method == http.MethodGet:
		s.listFacilities(w, r)
	case r.URL.Path == "/vobs" && r.Method == http.MethodPost:
		s.createVOB(w, r)
	case r.URL.Path == "/vobs" && r.Method == http.MethodGet:
		s.listVOBs(w, r)
	case r.URL.Path == "/vobs/verify" && r.Method == http.MethodPost:
		s.reverify(w, r)
	case vobPath.MatchString(r.URL.Path) && r.Method == http.MethodGet:
		s.getVOB(w, vobPath.FindStringSubmatch(r.URL.Path)[1])
	case vobPath.MatchString(r.URL.Path) && r.Method == http.MethodPut:
		s.updateVOB(w, r, vobPath.FindStringSubmatch(r.URL.Path)[1])
	default:
		fail(w, http.StatusNotFound, "not_found", "no such route")
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

func randomID(prefix string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// authorize is the user-facing step of the authorization code flow; the
// simulated user is logged in and approves (or denies, when scripted).
func (s *Sim) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	redirect, err := url.Parse(q.Get("redirect_uri"))
	s.mu.Lock()
	_, known := s.clients[q.Get("client_id")]
	deny := s.deny
	s.mu.Unlock()
	if err != nil || q.Get("redirect_uri") == "" || !known || q.Get("response_type") != "code" {
		fail(w, http.StatusBadRequest, "invalid_request", "response_type=code, a known client_id and redirect_uri are required")
		return
	}
	back := redirect.Query()
	if st := q.Get("state"); st != "" {
		back.Set("state", st)
	}
	if deny {
		back.Set("error", "access_denied")
		back.Set("error_description", "User denied the request")
	} else {
		code := randomID("code_")
		s.mu.Lock()
		s.codes[code] = codeGrant{client: q.Get("client_id"), redirect: q.Get("redirect_uri"), scope: q.Get("scope")}
		s.mu.Unlock()
		back.Set("code", code)
	}
	redirect.RawQuery = back.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}

func (s *Sim) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		fail(w, http.StatusBadRequest, "invalid_request", "form body expected")
		return
	}
	f := r.PostForm
	grant := f.Get("grant_type")
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls["grant "+grant]++
	secret, ok := s.clients[f.Get("client_id")]
	if !ok || subtle.ConstantTimeCompare([]byte(secret), []byte(f.Get("client_secret"))) != 1 {
		fail(w, http.StatusUnauthorized, "invalid_client", "unknown client or wrong secret")
		return
	}
	client := f.Get("client_id")
	scopes := []string{"vobs", "payers", "facilities"}
	switch grant {
	case "client_credentials":
	case "authorization_code":
		g, ok := s.codes[f.Get("code")]
		delete(s.codes, f.Get("code"))
		if !ok || g.client != client || g.redirect != f.Get("redirect_uri") {
			fail(w, http.StatusBadRequest, "invalid_grant", "unknown or used code, or redirect_uri mismatch")
			return
		}
		if g.scope != "" {
			scopes = strings.Fields(g.scope)
		}
	case "refresh_token":
		if c, ok := s.refresh[f.Get("refresh_token")]; !ok || c != client {
			fail(w, http.StatusBadRequest, "invalid_grant", "refresh token is invalid or revoked")
			return
		}
		if sc := f.Get("scope"); sc != "" {
			scopes = strings.Fields(sc)
		}
	default:
		fail(w, http.StatusBadRequest, "unsupported_grant_type", "grant_type must be authorization_code, client_credentials or refresh_token")
		return
	}
	at, rt := randomID("at_"), randomID("rt_")
	exp := time.Now().Add(s.tokenTTL).UTC()
	s.access[at] = &tok{client: client, exp: exp}
	s.refresh[rt] = client
	writeJSON(w, http.StatusOK, map[string]any{"token_type": "bearer", "id": "user_" + client, "access_token": at,
		"refresh_token": rt, "expires_at": exp.Format(time.RFC3339), "scopes": scopes})
}

func (s *Sim) authorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	scheme, t, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	tk := s.access[t]
	if tk == nil || time.Now().After(tk.exp) || (s.tokenUses > 0 && tk.uses >= s.tokenUses) {
		return false
	}
	tk.uses++
	return true
}

func page(r *http.Request, n int) (int, int) {
	skip, _ := strconv.Atoi(r.URL.Query().Get("skip"))
	limit, err := strconv.Atoi(r.URL.Query().Get("limit"))
	if err != nil || limit <= 0 {
		limit = 20
	}
	skip = max(0, min(skip, n))
	return skip, min(n, skip+limit)
}

func (s *Sim) listPayers(w http.ResponseWriter, r *http.Request) {
	q := strings.ToLower(r.URL.Query().Get("q"))
	s.mu.Lock()
	var list []Payer
	for _, p := range s.payers {
		if q == "" || strings.Contains(strings.ToLower(p.Name), q) || strings.Contains(strings.ToLower(p.ID), q) {
			list = append(list, p)
		}
	}
	s.mu.Unlock()
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	a, b := page(r, len(list))
	writeJSON(w, http.StatusOK, map[string]any{"data": list[a:b], "total": len(list)})
}

func (s *Sim) configuration(w http.ResponseWriter, id string) {
	s.mu.Lock()
	p, ok := s.payers[id]
	s.mu.Unlock()
	if !ok {
		fail(w, http.StatusNotFound, "not_found", "unknown payer_id "+id)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"payer_id": p.ID, "payer_name": p.Name, "required_fields": p.RequiredFields})
}

func (s *Sim) listFacilities(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	list := append([]map[string]string(nil), s.facilities...)
	s.mu.Unlock()
	a, b := page(r, len(list))
	writeJSON(w, http.StatusOK, map[string]any{"data": list[a:b], "total": len(list)})
}

// vobFields are the fields POST /vobs and PUT /vobs/{_id} accept.
var vobFields = map[string]bool{"first_name": true, "last_name": true, "member_id": true, "payer_id": true, "date_of_birth": true,
	"client_type": true, "subscriber_relation": true, "insurance_phone": true, "client_phone": true, "ssn": true, "gender": true,
	"facility": true, "group_number": true, "place_of_service": true, "email": true, "phone": true, "payer_name": true, "tag": true, "action": true}

var (
	dobRE      = regexp.MustCompile(`^([0-9]{2}/[0-9]{2}/[0-9]{4}|[0-9]{4}-[0-9]{2}-[0-9]{2})$`)
	relationRE = regexp.MustCompile(`^SR0[1-5]$`)
	clientType = map[string]bool{"prospect": true, "termed": true, "client": true, "referred": true, "discharged": true}
)

func readFields(r *http.Request) (map[string]string, string) {
	var in map[string]any
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil {
		return nil, "body is not a JSON object"
	}
	out := map[string]string{}
	for k, v := range in {
		if !vobFields[k] {
			return nil, "unknown field " + k
		}
		sv, ok := v.(string)
		if !ok {
			return nil, k + " must be a string"
		}
		out[k] = sv
	}
	return out, ""
}

// validate checks values and the payer's required fields, the caller
// holding s.mu; it answers the 4xx itself.
func (s *Sim) validate(w http.ResponseWriter, f map[string]string) bool {
	p, ok := s.payers[f["payer_id"]]
	if !ok {
		fail(w, http.StatusUnprocessableEntity, "invalid_payer", "payer_id is missing or unknown; see GET /payers")
		return false
	}
	var missing []string
	for _, rf := range p.RequiredFields {
		if f[rf] == "" {
			missing = append(missing, rf)
		}
	}
	if len(missing) > 0 {
		fail(w, http.StatusUnprocessableEntity, "missing_required_fields", "payer "+p.ID+" requires "+strings.Join(missing, ", "), "fields", missing)
		return false
	}
	switch {
	case f["date_of_birth"] != "" && !dobRE.MatchString(f["date_of_birth"]):
		fail(w, http.StatusUnprocessableEntity, "invalid_field", "date_of_birth must be MM/DD/YYYY or YYYY-MM-DD", "fields", []string{"date_of_birth"})
		return false
	case f["subscriber_relation"] != "" && !relationRE.MatchString(f["subscriber_relation"]):
		fail(w, http.StatusUnprocessableEntity, "invalid_field", "subscriber_relation must be SR01..SR05", "fields", []string{"subscriber_relation"})
		return false
	case f["client_type"] != "" && !clientType[f["client_type"]]:
		fail(w, http.StatusUnprocessableEntity, "invalid_field", "client_type is not one of prospect, termed, client, referred, discharged", "fields", []string{"client_type"})
		return false
	case f["facility"] != "" && f["facility"] != "ACCOUNT_DEFAULT" && !s.hasFacility(f["facility"]):
		fail(w, http.StatusUnprocessableEntity, "invalid_field", "unknown facility; see GET /facilities", "fields", []string{"facility"})
		return false
	}
	return true
}

func (s *Sim) hasFacility(id string) bool {
	for _, f := range s.facilities {
		if f["_id"] == id {
			return true
		}
	}
	return false
}

func (s *Sim) startVerification(v *VOB) {
	v.script = s.scripts[v.Fields["member_id"]]
	v.pendingLeft = v.script.PendingPolls
	if v.pendingLeft == 0 {
		v.pendingLeft = 1
	}
	v.Status, v.Coverage, v.Error = "pending", "", ""
	v.verification++
}

func (s *Sim) createVOB(w http.ResponseWriter, r *http.Request) {
	f, msg := readFields(r)
	if msg != "" {
		fail(w, http.StatusBadRequest, "invalid_request", msg)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.validate(w, f) {
		return
	}
	action := f["action"]
	delete(f, "action")
	if f["facility"] == "" {
		f["facility"] = "ACCOUNT_DEFAULT"
	}
	v := &VOB{ID: randomID("vob_"), Fields: f, CreatedAt: time.Now().UTC(), Status: "saved"}
	if action != "save" {
		s.startVerification(v)
	}
	s.vobs[v.ID] = v
	s.order = append(s.order, v.ID)
	writeJSON(w, http.StatusCreated, s.view(v))
}

func (s *Sim) updateVOB(w http.ResponseWriter, r *http.Request, id string) {
	f, msg := readFields(r)
	if msg != "" {
		fail(w, http.StatusBadRequest, "invalid_request", msg)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.vobs[id]
	if v == nil {
		fail(w, http.StatusNotFound, "not_found", "no VOB "+id)
		return
	}
	merged := cloneMap(v.Fields)
	action := f["action"]
	delete(f, "action")
	for k, val := range f {
		merged[k] = val
	}
	if !s.validate(w, merged) {
		return
	}
	v.Fields = merged
	v.Updates++
	if action == "verify" {
		v.Reverified++
		s.startVerification(v)
	}
	writeJSON(w, http.StatusOK, s.view(v))
}

func (s *Sim) reverify(w http.ResponseWriter, r *http.Request) {
	var in struct {
		ID string `json:"_id"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&in); err != nil || in.ID == "" {
		fail(w, http.StatusBadRequest, "invalid_request", "_id is required")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.vobs[in.ID]
	if v == nil {
		fail(w, http.StatusNotFound, "not_found", "no VOB "+in.ID)
		return
	}
	v.Reverified++
	s.startVerification(v)
	writeJSON(w, http.StatusAccepted, s.view(v))
}

func (s *Sim) getVOB(w http.ResponseWriter, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.vobs[id]
	if v == nil {
		fail(w, http.StatusNotFound, "not_found", "no VOB "+id)
		return
	}
	if v.Status == "pending" {
		v.pendingLeft--
		if v.pendingLeft < 0 {
			s.resolve(v)
		}
	}
	writeJSON(w, http.StatusOK, s.view(v))
}

func (s *Sim) resolve(v *VOB) {
	v.VerifiedAt = time.Now().UTC()
	if v.script.Error != "" {
		v.Status, v.Error = "error", v.script.Error
		return
	}
	v.Status, v.Coverage = "verified", v.script.Coverage
	if v.Coverage == "" {
		v.Coverage = "active"
	}
}

func (s *Sim) listVOBs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	var list []map[string]any
	for _, id := range s.order {
		v := s.vobs[id]
		if c := q.Get("coverage"); c != "" && v.Coverage != c {
			continue
		}
		if ft := q.Get("q"); ft != "" && !strings.Contains(strings.ToLower(v.Fields["first_name"]+" "+v.Fields["last_name"]+" "+v.Fields["member_id"]), strings.ToLower(ft)) {
			continue
		}
		if ct := q.Get("client_type"); ct != "" && v.Fields["client_type"] != ct {
			continue
		}
		if fac := q.Get("facility"); fac != "" && v.Fields["facility"] != fac {
			continue
		}
		list = append(list, s.view(v))
	}
	s.mu.Unlock()
	if q.Get("sort") == "-created_at" {
		for i, j := 0, len(list)-1; i < j; i, j = i+1, j-1 {
			list[i], list[j] = list[j], list[i]
		}
	}
	a, b := page(r, len(list))
	writeJSON(w, http.StatusOK, map[string]any{"data": list[a:b], "total": len(list)})
}

var errorMessages = map[string]string{
	"patient_not_found":    "Patient Not Found",
	"invalid_member_id":    "Invalid or missing member ID",
	"invalid_dob":          "Date of birth does not match the payer's records",
	"invalid_name":         "Name does not match the payer's records",
	"provider_not_on_file": "Provider not on file with the payer",
	"payer_unavailable":    "Payer unable to respond at this time",
}

func f64(v float64) *float64 { return &v }

func (s *Sim) view(v *VOB) map[string]any {
	out := map[string]any{"_id": v.ID, "status": v.Status, "created_at": v.CreatedAt.Format(time.RFC3339)}
	for k, val := range v.Fields {
		out[k] = val
	}
	if p, ok := s.payers[v.Fields["payer_id"]]; ok {
		out["payer_name"] = p.Name
	}
	switch v.Status {
	case "verified":
		out["coverage"] = v.Coverage
		out["verified_at"] = v.VerifiedAt.Format(time.RFC3339)
		if v.Coverage == "active" {
			year := strconv.Itoa(time.Now().Year())
			out["plan"] = map[string]any{"name": "PPO Gold", "group_number": "GRP-77", "start_date": year + "-01-01", "end_date": year + "-12-31"}
			out["benefits"] = map[string]any{
				"in_network": []map[string]any{{"service_type": "30", "copay": f64(25), "coinsurance": f64(0.2), "deductible": f64(1500), "deductible_remaining": f64(500),
					"out_of_pocket": f64(6000), "out_of_pocket_remaining": f64(4200)}},
				"out_of_network": []map[string]any{{"service_type": "30", "copay": nil, "coinsurance": f64(0.4), "deductible": f64(3000), "deductible_remaining": f64(3000)}},
			}
		}
	case "error":
		out["error"] = map[string]any{"code": v.Error, "message": errorMessages[v.Error]}
	}
	return out
}

// Authorize runs the user's part of the authorization code flow as a
// browser would (GET /oauth/authorize, following nothing) and returns the
// redirect it answers.
func (s *Sim) Authorize(clientID, redirectURI, state, scope string) (*url.URL, error) {
	q := url.Values{"response_type": {"code"}, "client_id": {clientID}, "redirect_uri": {redirectURI}, "state": {state}}
	if scope != "" {
		q.Set("scope", scope)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(s.URL + "/oauth/authorize?" + q.Encode())
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		return nil, fmt.Errorf("authorize answered %d", resp.StatusCode)
	}
	return url.Parse(resp.Header.Get("Location"))
}
