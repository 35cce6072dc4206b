// Package verifytreatment is the eligibility connector for
// VerifyTreatment: OAuth 2.0 (client credentials, or a refresh token from
// an authorization-code login; tokens are refreshed when they expire or are
// refused), verifications of benefits (VOBs) at /vobs, re-verification of
// a member's earlier VOB, and each payer's required fields, which are
// learnt from the payer configuration API and checked before any VOB is
// sent.
//
// The wire details VerifyTreatment's documentation leaves open are those
// of the simulator in verifytreatmenttest; see its package documentation.
package verifytreatment

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/p2pserver/p2pserver/facades/eligibility"
	"github.com/p2pserver/p2pserver/facades/vendorhttp"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// Vendor is the connector's name.
const Vendor = "verifytreatment"

// Config is the "vendors.verifytreatment" object of the eligibility
// configuration. Secret values may be "env:NAME".
type Config struct {
	// BaseURL of the API (required).
	BaseURL string `json:"baseUrl"`
	// ClientID and ClientSecret are the client credentials VerifyTreatment
	// issued.
	ClientID     string `json:"clientId"`
	ClientSecret string `json:"clientSecret"`
	// Grant is "client_credentials" (default) or "refresh_token": then
	// RefreshToken, obtained by an authorization-code login, is used and
	// renewed; when VerifyTreatment revokes it, checks fail with a clear
	// error until a new one is configured.
	Grant        string `json:"grant"`
	RefreshToken string `json:"refreshToken"`
	// Scope, when set, is sent with token requests.
	Scope string `json:"scope"`
	// ClientType is sent as client_type on new VOBs (prospect, termed,
	// client, referred, discharged); default none.
	ClientType string `json:"clientType"`
	// Timeout bounds each API call; default 30s.
	Timeout eligibility.Duration `json:"timeout"`
	// ConfigTTL is how long a payer's required fields are trusted before
	// they are fetched again; default 1h.
	ConfigTTL eligibility.Duration `json:"configTtl"`
}

// Connector talks to VerifyTreatment. It is safe for concurrent use.
type Connector struct {
	cfg  Config
	base string
	http vendorhttp.Client
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex
	access  string
	refresh string
	expiry  time.Time

	cmu     sync.Mutex
	configs map[string]payerConfig
}

type payerConfig struct {
	fields  []string
	fetched time.Time
}

// New builds the connector.
func New(cfg Config, hc *http.Client, log *slog.Logger) (*Connector, error) {
	cfg.ClientID = eligibility.Secret(cfg.ClientID)
	cfg.ClientSecret = eligibility.Secret(cfg.ClientSecret)
	cfg.RefreshToken = eligibility.Secret(cfg.RefreshToken)
	switch {
	case cfg.BaseURL == "":
		return nil, fmt.Errorf("verifytreatment: baseUrl is required")
	case cfg.ClientID == "" || cfg.ClientSecret == "":
		return nil, fmt.Errorf("verifytreatment: clientId and clientSecret are required")
	}
	if cfg.Grant == "" {
		cfg.Grant = "client_credentials"
	}
	if cfg.Grant != "client_credentials" && cfg.Grant != "refresh_token" {
		return nil, fmt.Errorf("verifytreatment: grant must be client_credentials or refresh_token")
	}
	if cfg.Grant == "refresh_token" && cfg.RefreshToken == "" {
		return nil, fmt.Errorf("verifytreatment: grant refresh_token needs refreshToken")
	}
	if _, err := url.Parse(cfg.BaseURL); err != nil {
		return nil, fmt.Errorf("verifytreatment: baseUrl: %w", err)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Connector{cfg: cfg, base: strings.TrimRight(cfg.BaseURL, "/"), log: log, now: time.Now,
		refresh: cfg.RefreshToken, configs: map[string]payerConfig{},
		http: vendorhttp.Client{Vendor: "VerifyTreatment", HTTP: hc, Timeout: time.Duration(cfg.Timeout)}}, nil
}

// Vendor implements eligibility.Connector.
func (c *Connector) Vendor() string { return Vendor }

// Statuses implements eligibility.Connector. A VOB's status word is
// "pending", "coverage:<coverage>" once verified, or "error:<code>".
func (c *Connector) Statuses() []eligibility.StatusMapping {
	return []eligibility.StatusMapping{
		{Status: "pending", Meaning: "VOB created or re-verification started; VerifyTreatment is verifying", Task: eligibility.TaskInProgress},
		{Status: "coverage:active", Meaning: "verified: active coverage", Task: eligibility.TaskCompleted, Outcome: "complete", InForce: "true",
			Disposition: "Active coverage"},
		{Status: "coverage:inactive", Meaning: "verified: coverage inactive", Task: eligibility.TaskCompleted, Outcome: "complete", InForce: "false",
			Disposition: "Coverage inactive"},
		{Status: "coverage:unavailable", Meaning: "verification could not determine coverage", Task: eligibility.TaskFailed, Outcome: "error",
			Error: eligibility.ErrPayerUnavailable, Disposition: "Coverage status unavailable from the payer"},
		{Status: "error:patient_not_found", Meaning: "\"Patient Not Found\" (the documented advice: also send the member ID)", Task: eligibility.TaskFailed,
			Outcome: "error", Error: eligibility.ErrMemberNotFound, Disposition: "Patient not found"},
		{Status: "error:invalid_member_id", Meaning: "member ID not recognised", Task: eligibility.TaskFailed, Outcome: "error", Error: eligibility.ErrMemberID,
			Disposition: "Member ID not recognised"},
		{Status: "error:invalid_dob", Meaning: "date of birth does not match", Task: eligibility.TaskFailed, Outcome: "error", Error: eligibility.ErrMemberDOB,
			Disposition: "Date of birth not recognised"},
		{Status: "error:invalid_name", Meaning: "name does not match", Task: eligibility.TaskFailed, Outcome: "error", Error: eligibility.ErrMemberName,
			Disposition: "Name not recognised"},
		{Status: "error:provider_not_on_file", Meaning: "provider not on file with the payer", Task: eligibility.TaskFailed, Outcome: "error",
			Error: eligibility.ErrProviderNPI, Disposition: "Provider not on file"},
		{Status: "error:payer_unavailable", Meaning: "payer unable to respond", Task: eligibility.TaskFailed, Outcome: "error",
			Error: eligibility.ErrPayerUnavailable, Disposition: "Payer unavailable"},
		{Status: "missing-fields", Meaning: "the payer configuration requires fields the request lacks (found when the configuration changed after the request was accepted)",
			Task: eligibility.TaskFailed, Outcome: "error", Error: eligibility.ErrMissingFields, Disposition: "Missing fields the payer requires"},
	}
}

// fieldOf maps VerifyTreatment's VOB field names to request fields.
var fieldOf = map[string]eligibility.Field{
	"first_name": eligibility.FieldFirstName, "last_name": eligibility.FieldLastName, "date_of_birth": eligibility.FieldBirthDate,
	"member_id": eligibility.FieldMemberID, "gender": eligibility.FieldGender, "subscriber_relation": eligibility.FieldRelationship,
	"group_number": eligibility.FieldGroupNumber, "place_of_service": eligibility.FieldPlaceOfService,
}

// Prepare implements eligibility.Preparer: it learns the required fields
// of every routed payer, so requests are checked before any VOB is sent.
func (c *Connector) Prepare(ctx context.Context, routes []eligibility.Route) error {
	var failed []string
	for _, r := range routes {
		if r.Vendor != Vendor {
			continue
		}
		if _, err := c.payerConfig(ctx, r.VendorPayer(), true); err != nil {
			failed = append(failed, r.VendorPayer())
			c.log.Warn("verifytreatment: payer configuration not loaded; requests are checked when sent", "payer", r.VendorPayer(), "err", err)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("verifytreatment: payer configuration of %s not loaded", strings.Join(failed, ", "))
	}
	return nil
}

// payerConfig returns a payer's required fields, fetching them when they
// are unknown or older than ConfigTTL (or always, with fresh).
func (c *Connector) payerConfig(ctx context.Context, payer string, fresh bool) ([]string, error) {
	c.cmu.Lock()
	pc, ok := c.configs[payer]
	c.cmu.Unlock()
	ttl := time.Duration(c.cfg.ConfigTTL)
	if ttl <= 0 {
		ttl = time.Hour
	}
	if ok && !fresh && c.now().Sub(pc.fetched) < ttl {
		return pc.fields, nil
	}
	var out struct {
		RequiredFields []string `json:"required_fields"`
	}
	if err := c.call(ctx, vendorhttp.Request{Method: http.MethodGet, URL: c.base + "/payers/" + url.PathEscape(payer) + "/configuration"}, &out); err != nil {
		return nil, err
	}
	c.cmu.Lock()
	c.configs[payer] = payerConfig{fields: out.RequiredFields, fetched: c.now()}
	c.cmu.Unlock()
	return out.RequiredFields, nil
}

// Check implements eligibility.Connector: payer_id and facility come from
// the route; the payer's required fields are those its configuration
// named when last fetched.
func (c *Connector) Check(route eligibility.Route, req *eligibility.Request) []eligibility.Problem {
	c.cmu.Lock()
	pc, ok := c.configs[route.VendorPayer()]
	c.cmu.Unlock()
	if !ok {
		return nil // not known yet: checked when sent
	}
	return missing(route, req, pc.fields)
}

func missing(route eligibility.Route, req *eligibility.Request, required []string) []eligibility.Problem {
	var out []eligibility.Problem
	for _, name := range required {
		f, known := fieldOf[name]
		who := fmt.Sprintf("VerifyTreatment's configuration of payer %s", route.VendorPayer())
		switch {
		case !known:
			out = append(out, eligibility.Problem{Field: eligibility.Field(name),
				Message: fmt.Sprintf("%s requires %s, which this server cannot take from a FHIR request", who, name)})
		case !req.Has(f):
			out = append(out, eligibility.Problem{Field: f, Message: fmt.Sprintf("%s requires %s (%s)", who, name, f.Path())})
		}
	}
	return out
}

// relation maps FHIR subscriber-relationship codes to VerifyTreatment's.
var relation = map[string]string{"self": "SR01", "spouse": "SR02", "common": "SR02", "child": "SR03", "other": "SR04", "injured": "SR04", "parent": "SR05"}

var gender = map[string]string{"male": "M", "female": "F", "other": "Other"}

func (c *Connector) fields(route eligibility.Route, req *eligibility.Request) map[string]string {
	f := map[string]string{
		"first_name": req.Patient.FirstName, "last_name": req.Patient.LastName, "member_id": req.MemberID,
		"payer_id": route.VendorPayer(), "date_of_birth": req.Patient.BirthDate, "gender": gender[req.Patient.Gender],
		"subscriber_relation": relation[req.Relationship], "group_number": req.GroupNumber, "client_type": c.cfg.ClientType,
		"facility": route.Facility,
	}
	if len(req.Items) > 0 {
		f["place_of_service"] = req.Items[0].PlaceOfService
	}
	if f["facility"] == "" {
		f["facility"] = "ACCOUNT_DEFAULT"
	}
	for k, v := range f {
		if v == "" {
			delete(f, k)
		}
	}
	return f
}

// Submit implements eligibility.Connector. With a VOB from an earlier
// check of the same member and payer (View VOB, GET /vobs/{_id}), that VOB
// is verified again rather than a new one created: with Re-Verify VOB
// (POST /vobs/verify {"_id"}) when the request's data are the VOB's, else
// with Update VOB carrying the new data and "action": "verify"
// (PUT /vobs/{_id}). Otherwise, or when the earlier VOB is gone, a new VOB
// is created and verified (Create VOB, POST /vobs).
func (c *Connector) Submit(ctx context.Context, route eligibility.Route, req *eligibility.Request) (eligibility.Result, error) {
	required, err := c.payerConfig(ctx, route.VendorPayer(), false)
	if err != nil {
		return eligibility.Result{}, err
	}
	if probs := missing(route, req, required); len(probs) > 0 {
		var names []string
		for _, p := range probs {
			names = append(names, string(p.Field))
		}
		sort.Strings(names)
		return eligibility.Result{Status: "missing-fields", Reason: strings.Join(names, ", ")}, nil
	}
	fields := c.fields(route, req)
	body := map[string]any{}
	for k, v := range fields {
		body[k] = v
	}
	body["action"] = "verify"
	var v vob
	if req.Prior != "" {
		var prior map[string]any
		err := c.call(ctx, vendorhttp.Request{Method: http.MethodGet, URL: c.base + "/vobs/" + url.PathEscape(req.Prior)}, &prior)
		if err == nil {
			if sameData(prior, fields) {
				err = c.call(ctx, vendorhttp.Request{Method: http.MethodPost, URL: c.base + "/vobs/verify", JSON: map[string]any{"_id": req.Prior}}, &v)
			} else {
				err = c.call(ctx, vendorhttp.Request{Method: http.MethodPut, URL: c.base + "/vobs/" + url.PathEscape(req.Prior), JSON: body}, &v)
			}
			if err == nil {
				return c.result(v, req), nil
			}
		}
		if !errs.Is(err, errs.NotFound) {
			return eligibility.Result{}, err
		}
		// The earlier VOB is gone: start a new one.
	}
	if err := c.call(ctx, vendorhttp.Request{Method: http.MethodPost, URL: c.base + "/vobs", JSON: body}, &v); err != nil {
		return eligibility.Result{}, err
	}
	if v.ID == "" {
		return eligibility.Result{}, errs.E("verifytreatment.vob", errs.Transient, "VerifyTreatment answered a VOB without _id")
	}
	return c.result(v, req), nil
}

// sameData reports whether a VOB (as View VOB answers it) holds every
// field a new VOB would be sent with.
func sameData(prior map[string]any, fields map[string]string) bool {
	for k, want := range fields {
		if have, _ := prior[k].(string); have != want {
			return false
		}
	}
	return true
}

// clockSkew is how far VerifyTreatment's clock may be from this server's
// when telling whether a VOB was created or verified by a call of ours.
const clockSkew = 5 * time.Minute

// Find implements eligibility.Finder: after a create or re-verification
// whose answer was lost (req.Unconfirmed), it looks for what that call did
// before anything is sent again. The member's earlier VOB (View VOB) was
// re-verified when it is pending or verified since; otherwise a VOB
// created since for the same member, payer, name and birth date is found
// with List VOB (GET /vobs, free-text q on the member id, newest first).
func (c *Connector) Find(ctx context.Context, route eligibility.Route, req *eligibility.Request) (eligibility.Result, bool, error) {
	since := req.Unconfirmed.Add(-clockSkew)
	if req.Prior != "" {
		var prior vob
		err := c.call(ctx, vendorhttp.Request{Method: http.MethodGet, URL: c.base + "/vobs/" + url.PathEscape(req.Prior)}, &prior)
		switch {
		case err == nil && (prior.Status == "pending" || after(prior.VerifiedAt, since)):
			return c.result(prior, req), true, nil
		case err == nil:
			return eligibility.Result{}, false, nil // not re-verified: Submit does it
		case !errs.Is(err, errs.NotFound):
			return eligibility.Result{}, false, err
		}
	}
	q := url.Values{"q": {req.MemberID}, "sort": {"-created_at"}, "limit": {"20"}}
	var list struct {
		Data []struct {
			vob
			PayerID     string `json:"payer_id"`
			MemberID    string `json:"member_id"`
			LastName    string `json:"last_name"`
			DateOfBirth string `json:"date_of_birth"`
			CreatedAt   string `json:"created_at"`
		} `json:"data"`
	}
	if err := c.call(ctx, vendorhttp.Request{Method: http.MethodGet, URL: c.base + "/vobs?" + q.Encode()}, &list); err != nil {
		return eligibility.Result{}, false, err
	}
	for _, v := range list.Data {
		if v.PayerID == route.VendorPayer() && v.MemberID == req.MemberID && strings.EqualFold(v.LastName, req.Patient.LastName) &&
			sameDate(v.DateOfBirth, req.Patient.BirthDate) && after(v.CreatedAt, since) {
			return c.result(v.vob, req), true, nil
		}
	}
	return eligibility.Result{}, false, nil
}

// after reports whether a VOB's timestamp (RFC 3339) is at or after t; an
// absent or unreadable one is not.
func after(stamp string, t time.Time) bool {
	at, err := time.Parse(time.RFC3339, stamp)
	return err == nil && !at.Before(t)
}

// sameDate compares a VOB's date_of_birth (MM/DD/YYYY or YYYY-MM-DD) with
// a FHIR date.
func sameDate(vobDate, fhirDate string) bool {
	if t, err := time.Parse("01/02/2006", vobDate); err == nil {
		return t.Format("2006-01-02") == fhirDate
	}
	return vobDate == fhirDate
}

// Poll implements eligibility.Connector: GET /vobs/{_id}.
func (c *Connector) Poll(ctx context.Context, route eligibility.Route, ref string, req *eligibility.Request) (eligibility.Result, error) {
	var v vob
	if err := c.call(ctx, vendorhttp.Request{Method: http.MethodGet, URL: c.base + "/vobs/" + url.PathEscape(ref)}, &v); err != nil {
		return eligibility.Result{}, err
	}
	return c.result(v, req), nil
}

// Webhook implements eligibility.Connector. VerifyTreatment documents no
// webhooks; its checks are polled, and every delivery is refused.
func (c *Connector) Webhook(ctx context.Context, h http.Header, body []byte) ([]eligibility.Notice, error) {
	return nil, errs.E("verifytreatment.webhook", errs.NotFound, "VerifyTreatment sends no webhooks; its checks are polled")
}

type vob struct {
	ID         string `json:"_id"`
	Status     string `json:"status"`
	Coverage   string `json:"coverage"`
	VerifiedAt string `json:"verified_at"`
	Error      *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	Plan *struct {
		Name        string `json:"name"`
		GroupNumber string `json:"group_number"`
		StartDate   string `json:"start_date"`
		EndDate     string `json:"end_date"`
	} `json:"plan"`
	Benefits *struct {
		InNetwork    []vobBenefit `json:"in_network"`
		OutOfNetwork []vobBenefit `json:"out_of_network"`
	} `json:"benefits"`
}

type vobBenefit struct {
	ServiceType          string   `json:"service_type"`
	Copay                *float64 `json:"copay"`
	Coinsurance          *float64 `json:"coinsurance"`
	Deductible           *float64 `json:"deductible"`
	DeductibleRemaining  *float64 `json:"deductible_remaining"`
	OutOfPocket          *float64 `json:"out_of_pocket"`
	OutOfPocketRemaining *float64 `json:"out_of_pocket_remaining"`
}

func (c *Connector) result(v vob, req *eligibility.Request) eligibility.Result {
	res := eligibility.Result{Ref: v.ID}
	switch v.Status {
	case "pending", "saved", "processing":
		res.Status = "pending"
	case "verified":
		res.Status = "coverage:" + v.Coverage
		if v.Coverage == "active" || v.Coverage == "inactive" {
			res.Coverage = coverage(v)
		}
	case "error":
		code, msg := "", ""
		if v.Error != nil {
			code, msg = v.Error.Code, v.Error.Message
		}
		res.Status, res.Reason = "error:"+code, msg
	default:
		res.Status = v.Status
	}
	return res
}

func coverage(v vob) *eligibility.Coverage {
	cov := &eligibility.Coverage{}
	if p := v.Plan; p != nil {
		cov.PlanName, cov.GroupNumber, cov.Start, cov.End = p.Name, p.GroupNumber, p.StartDate, p.EndDate
	}
	if v.Benefits == nil {
		return cov
	}
	add := func(list []vobBenefit, network string) {
		for _, b := range list {
			cov.Benefits = append(cov.Benefits, eligibility.Benefit{ServiceType: b.ServiceType, Network: network, Copay: b.Copay,
				Coinsurance: b.Coinsurance, Deductible: b.Deductible, DeductibleRemaining: b.DeductibleRemaining,
				OutOfPocket: b.OutOfPocket, OutOfPocketRemaining: b.OutOfPocketRemaining})
		}
	}
	add(v.Benefits.InNetwork, "in")
	add(v.Benefits.OutOfNetwork, "out")
	return cov
}

// call makes an authenticated call; a refused token is replaced once.
func (c *Connector) call(ctx context.Context, rq vendorhttp.Request, out any) error {
	for attempt := 0; ; attempt++ {
		tok, err := c.token(ctx)
		if err != nil {
			return err
		}
		rq.Header = http.Header{"Authorization": {"Bearer " + tok}}
		_, err = c.http.Do(ctx, rq, out)
		if errs.Is(err, errs.Unauthorized) && attempt == 0 {
			c.mu.Lock()
			if c.access == tok {
				c.access = ""
			}
			c.mu.Unlock()
			continue
		}
		if errs.Is(err, errs.Unauthorized) {
			return errs.E("verifytreatment.call", errs.Unauthorized, "VerifyTreatment refused a freshly issued token", err)
		}
		if rq.Method != http.MethodGet && vendorhttp.MaybeProcessed(err) {
			// A VOB may have been created or re-verified: the worker finds
			// it (Find) before anything is sent again.
			return eligibility.Unconfirmed(err)
		}
		return err
	}
}

// token returns a valid access token: the current one, else one from the
// refresh token, else (client credentials only) a new grant.
func (c *Connector) token(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.access != "" && c.now().Before(c.expiry.Add(-time.Minute)) {
		return c.access, nil
	}
	if c.refresh != "" {
		err := c.grant(ctx, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {c.refresh}})
		if err == nil {
			return c.access, nil
		}
		if errs.KindOf(err) != errs.Unauthorized {
			return "", err
		}
		c.refresh = ""
		if c.cfg.Grant == "refresh_token" {
			return "", errs.E("verifytreatment.token", errs.Unauthorized,
				"VerifyTreatment revoked the refresh token; log in again (authorization code) and configure the new refreshToken", err)
		}
		c.log.Warn("verifytreatment: refresh token refused; asking for a new client credentials grant", "err", err)
	}
	if c.cfg.Grant == "refresh_token" {
		return "", errs.E("verifytreatment.token", errs.Unauthorized, "no VerifyTreatment refresh token: log in again (authorization code) and configure refreshToken")
	}
	if err := c.grant(ctx, url.Values{"grant_type": {"client_credentials"}}); err != nil {
		return "", err
	}
	return c.access, nil
}

// grant asks the token endpoint; c.mu is held.
func (c *Connector) grant(ctx context.Context, form url.Values) error {
	form.Set("client_id", c.cfg.ClientID)
	form.Set("client_secret", c.cfg.ClientSecret)
	if c.cfg.Scope != "" {
		form.Set("scope", c.cfg.Scope)
	}
	var out struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
		ExpiresAt    any    `json:"expires_at"`
	}
	_, err := c.http.Do(ctx, vendorhttp.Request{Method: http.MethodPost, URL: c.base + "/oauth/token", Form: form}, &out)
	if err != nil {
		if k := errs.KindOf(err); k == errs.Unauthorized || k == errs.Unprocessable || k == errs.NotFound {
			return errs.E("verifytreatment.token", errs.Unauthorized,
				fmt.Sprintf("VerifyTreatment refused the %s grant (the credentials may have been revoked)", form.Get("grant_type")), err)
		}
		return err
	}
	if out.AccessToken == "" {
		return errs.E("verifytreatment.token", errs.Transient, "VerifyTreatment's token answer had no access_token")
	}
	c.access = out.AccessToken
	if out.RefreshToken != "" {
		c.refresh = out.RefreshToken
	}
	c.expiry = expiresAt(out.ExpiresAt, c.now())
	return nil
}

// expiresAt reads expires_at as an RFC 3339 time or Unix seconds; an
// unreadable one is taken as 5 minutes, so the token is renewed soon
// rather than trusted forever.
func expiresAt(v any, now time.Time) time.Time {
	switch t := v.(type) {
	case string:
		if ts, err := time.Parse(time.RFC3339, t); err == nil {
			return ts
		}
	case float64:
		if t > 1e9 {
			return time.Unix(int64(t), 0)
		}
	}
	return now.Add(5 * time.Minute)
}

// Exchange trades an authorization code (from the authorization endpoint,
// after the user approved) for tokens, and returns the refresh token to
// configure as refreshToken with grant "refresh_token".
func Exchange(ctx context.Context, hc *http.Client, baseURL, clientID, clientSecret, code, redirectURI string) (string, error) {
	c := vendorhttp.Client{Vendor: "VerifyTreatment", HTTP: hc}
	var out struct {
		RefreshToken string `json:"refresh_token"`
	}
	_, err := c.Do(ctx, vendorhttp.Request{Method: http.MethodPost, URL: strings.TrimRight(baseURL, "/") + "/oauth/token", Form: url.Values{
		"grant_type": {"authorization_code"}, "code": {code}, "client_id": {clientID}, "client_secret": {clientSecret}, "redirect_uri": {redirectURI}}}, &out)
	if err != nil {
		return "", err
	}
	if out.RefreshToken == "" {
		return "", errs.E("verifytreatment.exchange", errs.Transient, "VerifyTreatment issued no refresh token")
	}
	return out.RefreshToken, nil
}

// AuthorizeURL is where a user logs in to VerifyTreatment to approve this
// server (the authorization code flow); state should be random and checked
// on the way back.
func AuthorizeURL(baseURL, clientID, redirectURI, state, scope string) string {
	q := url.Values{"response_type": {"code"}, "client_id": {clientID}, "redirect_uri": {redirectURI}, "state": {state}}
	if scope != "" {
		q.Set("scope", scope)
	}
	return strings.TrimRight(baseURL, "/") + "/oauth/authorize?" + q.Encode()
}
