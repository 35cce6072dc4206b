// Package tuuthfairy is the eligibility connector for tuuthfairy's GraphQL
// API: payer-portal datasource connections per provider NPI
// (connectDatasource, addProviderToConnection, connection, connections,
// confirmDatasource2FaCode), eligibility requests (requestEligibility,
// eligibility), and webhooks signed in x-tuuthfairy-signature.
//
// A check for a payer routed with a websiteId first looks for the
// datasource connection of that website that lists the provider's NPI: a
// connection waiting for a 2FA code puts the check on hold (the Task asks
// for the code), one still logging in is waited for, a failed or
// disconnected one fails the check with what to do. Without such a
// connection, tuuthfairy answers from clearinghouse data.
//
// The queries are plain GraphQL documents with typed Go results
// (Operations); a test validates every one against the simulator's schema.
package tuuthfairy

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/facades/eligibility"
	"github.com/p2pserver/p2pserver/facades/vendorhttp"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// Vendor is the connector's name.
const Vendor = "tuuthfairy"

// Config is the "vendors.tuuthfairy" object of the eligibility
// configuration. Secret values may be "env:NAME".
type Config struct {
	// Endpoint is the GraphQL endpoint URL (required).
	Endpoint string `json:"endpoint"`
	// APIKey is sent as a bearer token.
	APIKey string `json:"apiKey"`
	// WebhookPublicKey is the PEM public key createWebhookConfig returned
	// (or "file:/path/to/public.pem"). Without it every webhook is refused
	// (401) and checks are polled.
	WebhookPublicKey string `json:"webhookPublicKey"`
	// Timeout bounds each call; default 30s.
	Timeout eligibility.Duration `json:"timeout"`
}

// Connector talks to tuuthfairy. It is safe for concurrent use.
type Connector struct {
	cfg  Config
	http vendorhttp.Client
	pub  crypto.PublicKey
}

// New builds the connector.
func New(cfg Config, hc *http.Client) (*Connector, error) {
	cfg.APIKey = eligibility.Secret(cfg.APIKey)
	cfg.WebhookPublicKey = eligibility.Secret(cfg.WebhookPublicKey)
	if cfg.Endpoint == "" || cfg.APIKey == "" {
		return nil, fmt.Errorf("tuuthfairy: endpoint and apiKey are required")
	}
	c := &Connector{cfg: cfg, http: vendorhttp.Client{Vendor: "tuuthfairy", HTTP: hc, Timeout: time.Duration(cfg.Timeout)}}
	if k := cfg.WebhookPublicKey; k != "" {
		if path, ok := strings.CutPrefix(k, "file:"); ok {
			b, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("tuuthfairy: webhookPublicKey: %w", err)
			}
			k = string(b)
		}
		block, _ := pem.Decode([]byte(k))
		if block == nil {
			return nil, fmt.Errorf("tuuthfairy: webhookPublicKey is not a PEM public key")
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("tuuthfairy: webhookPublicKey: %w", err)
		}
		c.pub = pub
	}
	return c, nil
}

// Vendor implements eligibility.Connector.
func (c *Connector) Vendor() string { return Vendor }

// Statuses implements eligibility.Connector: the connection statuses of a
// provider's datasource ("connection:<status>") and the eligibility
// request's ("eligibility:<status>[:<active|inactive|failureReason>]").
func (c *Connector) Statuses() []eligibility.StatusMapping {
	return []eligibility.StatusMapping{
		{Status: "connection:auth_in_progress", Meaning: "the datasource is logging in to the payer portal", Task: eligibility.TaskInProgress},
		{Status: "connection:connected", Meaning: "the datasource is connected; eligibility is requested next", Task: eligibility.TaskInProgress},
		{Status: "connection:auth_2fa_code", Meaning: "the payer portal asks for a 2FA code (confirmDatasource2FaCode)", Task: eligibility.TaskOnHold},
		{Status: "connection:auth_failed", Meaning: "the payer portal refused the datasource credentials", Task: eligibility.TaskFailed, Outcome: "error",
			Error: eligibility.ErrDatasourceCredentials, Disposition: "Datasource login failed"},
		{Status: "connection:disconnected", Meaning: "the datasource is disconnected", Task: eligibility.TaskFailed, Outcome: "error",
			Error: eligibility.ErrDatasourceDisconnected, Disposition: "Datasource disconnected"},
		{Status: "eligibility:requested", Meaning: "eligibility requested; tuuthfairy is working on it", Task: eligibility.TaskInProgress},
		{Status: "eligibility:ok:active", Meaning: "eligibility found, coverage active", Task: eligibility.TaskCompleted, Outcome: "complete", InForce: "true",
			Disposition: "Active coverage"},
		{Status: "eligibility:ok:inactive", Meaning: "eligibility found, coverage inactive", Task: eligibility.TaskCompleted, Outcome: "complete", InForce: "false",
			Disposition: "Coverage inactive"},
		{Status: "eligibility:failed:patient_not_found", Meaning: "patient not found", Task: eligibility.TaskFailed, Outcome: "error",
			Error: eligibility.ErrMemberNotFound, Disposition: "Patient not found (check names without suffixes, DOB, member id)"},
		{Status: "eligibility:failed:invalid_member_id", Meaning: "member id not recognised", Task: eligibility.TaskFailed, Outcome: "error",
			Error: eligibility.ErrMemberID, Disposition: "Member ID not recognised"},
		{Status: "eligibility:failed:invalid_dob", Meaning: "date of birth does not match", Task: eligibility.TaskFailed, Outcome: "error",
			Error: eligibility.ErrMemberDOB, Disposition: "Date of birth not recognised"},
		{Status: "eligibility:failed:invalid_name", Meaning: "name does not match", Task: eligibility.TaskFailed, Outcome: "error",
			Error: eligibility.ErrMemberName, Disposition: "Name not recognised"},
		{Status: "eligibility:failed:invalid_npi", Meaning: "the provider NPI is not valid for the payer", Task: eligibility.TaskFailed, Outcome: "error",
			Error: eligibility.ErrProviderNPI, Disposition: "Provider NPI not accepted"},
		{Status: "eligibility:failed:payer_unavailable", Meaning: "the payer did not answer", Task: eligibility.TaskFailed, Outcome: "error",
			Error: eligibility.ErrPayerUnavailable, Disposition: "Payer unavailable"},
		{Status: "eligibility:failed:datasource_unavailable", Meaning: "the provider's datasource could not be used", Task: eligibility.TaskFailed, Outcome: "error",
			Error: eligibility.ErrDatasourceDisconnected, Disposition: "Datasource unavailable"},
	}
}

var (
	dateRE = regexp.MustCompile(`^([0-9]{4})-([0-9]{2})-([0-9]{2})$`)
	npiRE  = regexp.MustCompile(`^[0-9]{10}$`)
)

// Check implements eligibility.Connector: tuuthfairy needs first and last
// name, a full date of birth, a member id and a 10-digit provider NPI.
func (c *Connector) Check(route eligibility.Route, req *eligibility.Request) []eligibility.Problem {
	out := eligibility.Missing(req, "tuuthfairy", eligibility.FieldFirstName, eligibility.FieldLastName,
		eligibility.FieldBirthDate, eligibility.FieldMemberID, eligibility.FieldProviderNPI)
	if req.Patient.BirthDate != "" && !dateRE.MatchString(req.Patient.BirthDate) {
		out = append(out, eligibility.Problem{Field: eligibility.FieldBirthDate, Message: "tuuthfairy needs a full date of birth"})
	}
	if req.ProviderNPI != "" && !npiRE.MatchString(req.ProviderNPI) {
		out = append(out, eligibility.Problem{Field: eligibility.FieldProviderNPI, Message: "tuuthfairy needs a 10-digit NPI"})
	}
	return out
}

// Operations are the GraphQL documents the connector sends.
var Operations = map[string]string{
	"GetConnections": `query GetConnections { connections { id datasourceId status providers { providerId name npi } } }`,
	"GetConnection":  `query GetConnection($id: ID!) { connection(id: $id) { id datasourceId status providers { providerId name npi } } }`,
	"ConnectDatasource": `mutation ConnectDatasource($input: ConnectDatasourceInput!) {
  connectDatasource(input: $input) { result { id status } userErrors { type message } } }`,
	"AddProviderToConnection": `mutation AddProviderToConnection($connectionId: ID!, $provider: ProviderInput!) {
  addProviderToConnection(connectionId: $connectionId, provider: $provider) { success userErrors { type message field } } }`,
	"ConfirmDatasource2FaCode": `mutation ConfirmDatasource2FaCode($id: ID!, $confirmCode: String!) {
  confirmDatasource2FaCode(id: $id, confirmCode: $confirmCode) { result { id status } userErrors { type message } } }`,
	"RequestEligibility": `mutation RequestEligibility($input: RequestEligibilityInput!) {
  requestEligibility(input: $input) { result { id } userErrors { type message } } }`,
	"GetEligibility": `query GetEligibility($id: ID!) { eligibility(id: $id) { id status payerId active failureReason
  plan { name groupNumber effectiveDate terminationDate }
  benefits { category serviceType network coinsurance deductible deductibleRemaining maximum maximumRemaining } } }`,
}

type userError struct {
	Type    string `json:"type"`
	Message string `json:"message"`
	Field   string `json:"field"`
}

type connectionJSON struct {
	ID           string `json:"id"`
	DatasourceID string `json:"datasourceId"`
	Status       string `json:"status"`
	Providers    []struct {
		NPI string `json:"npi"`
	} `json:"providers"`
}

func (cj connectionJSON) conn() eligibility.Connection {
	out := eligibility.Connection{ID: cj.ID, WebsiteID: cj.DatasourceID, Status: cj.Status, NPIs: []string{}}
	for _, p := range cj.Providers {
		out.NPIs = append(out.NPIs, p.NPI)
	}
	return out
}

// gql runs an operation and decodes its data into out.
func (c *Connector) gql(ctx context.Context, op string, vars map[string]any, out any) error {
	var resp struct {
		Data   json.RawMessage `json:"data"`
		Errors []struct {
			Message string `json:"message"`
		} `json:"errors"`
	}
	_, err := c.http.Do(ctx, vendorhttp.Request{Method: http.MethodPost, URL: c.cfg.Endpoint,
		Header: http.Header{"Authorization": {"Bearer " + c.cfg.APIKey}},
		JSON:   map[string]any{"query": Operations[op], "operationName": op, "variables": vars}}, &resp)
	if errs.Is(err, errs.Unauthorized) {
		return errs.E("tuuthfairy."+op, errs.Unauthorized, "tuuthfairy refused the API key; it may have been revoked", err)
	}
	if err != nil {
		return err
	}
	if len(resp.Errors) > 0 {
		return errs.E("tuuthfairy."+op, errs.Unprocessable, "tuuthfairy refused the request: "+resp.Errors[0].Message)
	}
	if err := json.Unmarshal(resp.Data, out); err != nil {
		return errs.E("tuuthfairy."+op, errs.Transient, "tuuthfairy answered data of another shape", err)
	}
	return nil
}

func userErrs(op string, list []userError) error {
	if len(list) == 0 {
		return nil
	}
	var msgs []string
	for _, u := range list {
		m := u.Message
		if u.Field != "" {
			m = u.Field + ": " + m
		}
		msgs = append(msgs, m)
	}
	return errs.E("tuuthfairy."+op, errs.Unprocessable, "tuuthfairy refused the request: "+strings.Join(msgs, "; "))
}

// Connections implements eligibility.Datasources.
func (c *Connector) Connections(ctx context.Context) ([]eligibility.Connection, error) {
	var out struct {
		Connections []connectionJSON `json:"connections"`
	}
	if err := c.gql(ctx, "GetConnections", nil, &out); err != nil {
		return nil, err
	}
	list := make([]eligibility.Connection, 0, len(out.Connections))
	for _, cj := range out.Connections {
		list = append(list, cj.conn())
	}
	return list, nil
}

// Connection implements eligibility.Datasources.
func (c *Connector) Connection(ctx context.Context, id string) (eligibility.Connection, error) {
	var out struct {
		Connection *connectionJSON `json:"connection"`
	}
	if err := c.gql(ctx, "GetConnection", map[string]any{"id": id}, &out); err != nil {
		return eligibility.Connection{}, err
	}
	if out.Connection == nil {
		return eligibility.Connection{}, errs.E("tuuthfairy.connection", errs.NotFound, fmt.Sprintf("tuuthfairy has no connection %q", id))
	}
	return out.Connection.conn(), nil
}

// Connect implements eligibility.Datasources: connectDatasource.
func (c *Connector) Connect(ctx context.Context, websiteID, npi string, cred eligibility.Credentials) (eligibility.Connection, error) {
	var out struct {
		ConnectDatasource struct {
			Result *struct {
				ID     string `json:"id"`
				Status string `json:"status"`
			} `json:"result"`
			UserErrors []userError `json:"userErrors"`
		} `json:"connectDatasource"`
	}
	vars := map[string]any{"input": map[string]any{"websiteId": websiteID, "provider": map[string]any{"npi": npi},
		"credentials": map[string]any{"username": cred.Username, "password": cred.Password}}}
	if err := c.gql(ctx, "ConnectDatasource", vars, &out); err != nil {
		return eligibility.Connection{}, err
	}
	p := out.ConnectDatasource
	if err := userErrs("connect", p.UserErrors); err != nil {
		return eligibility.Connection{}, err
	}
	if p.Result == nil {
		return eligibility.Connection{}, errs.E("tuuthfairy.connect", errs.Transient, "tuuthfairy answered no connection")
	}
	return eligibility.Connection{ID: p.Result.ID, WebsiteID: websiteID, Status: p.Result.Status, NPIs: []string{npi}}, nil
}

// AddProvider implements eligibility.Datasources: addProviderToConnection.
func (c *Connector) AddProvider(ctx context.Context, connectionID, npi string) error {
	var out struct {
		AddProviderToConnection struct {
			Success    bool        `json:"success"`
			UserErrors []userError `json:"userErrors"`
		} `json:"addProviderToConnection"`
	}
	if err := c.gql(ctx, "AddProviderToConnection", map[string]any{"connectionId": connectionID, "provider": map[string]any{"npi": npi}}, &out); err != nil {
		return err
	}
	p := out.AddProviderToConnection
	for _, u := range p.UserErrors {
		if u.Type == "not_found" {
			return errs.E("tuuthfairy.add-provider", errs.NotFound, fmt.Sprintf("tuuthfairy has no connection %q", connectionID))
		}
	}
	if err := userErrs("add-provider", p.UserErrors); err != nil {
		return err
	}
	if !p.Success {
		return errs.E("tuuthfairy.add-provider", errs.Unprocessable, "tuuthfairy did not add the provider")
	}
	return nil
}

// Confirm2FA implements eligibility.TwoFactor: confirmDatasource2FaCode.
// A code the portal refuses leaves the connection waiting for one: the
// result's status is connection:auth_2fa_code again.
func (c *Connector) Confirm2FA(ctx context.Context, connectionID, code string) (eligibility.Result, error) {
	var out struct {
		Confirm struct {
			Result *struct {
				ID     string `json:"id"`
				Status string `json:"status"`
			} `json:"result"`
			UserErrors []userError `json:"userErrors"`
		} `json:"confirmDatasource2FaCode"`
	}
	if err := c.gql(ctx, "ConfirmDatasource2FaCode", map[string]any{"id": connectionID, "confirmCode": code}, &out); err != nil {
		return eligibility.Result{}, err
	}
	p := out.Confirm
	if p.Result == nil {
		if err := userErrs("confirm-2fa", p.UserErrors); err != nil {
			return eligibility.Result{}, errs.E("tuuthfairy.confirm-2fa", errs.NotFound, err)
		}
		return eligibility.Result{}, errs.E("tuuthfairy.confirm-2fa", errs.Transient, "tuuthfairy answered no connection")
	}
	return connectionResult(connectionID, p.Result.Status, ""), nil
}

func connectionResult(id, status, website string) eligibility.Result {
	res := eligibility.Result{Status: "connection:" + status, Hold: &eligibility.Hold{Ref: id}}
	if status == "auth_2fa_code" {
		site := ""
		if website != "" {
			site = " (" + website + ")"
		}
		res.Hold.Prompt = fmt.Sprintf("The payer portal%s asks for a two-factor code for datasource connection %s: put it in this input's valueString, or call $confirm-2fa", site, id)
	}
	return res
}

const eligPrefix = "elig:"

// Submit implements eligibility.Connector.
func (c *Connector) Submit(ctx context.Context, route eligibility.Route, req *eligibility.Request) (eligibility.Result, error) {
	if route.WebsiteID != "" {
		conns, err := c.Connections(ctx)
		if err != nil {
			return eligibility.Result{}, err
		}
		for _, cn := range conns {
			if cn.WebsiteID != route.WebsiteID || !contains(cn.NPIs, req.ProviderNPI) {
				continue
			}
			if cn.Status != "connected" {
				return connectionResult(cn.ID, cn.Status, cn.WebsiteID), nil
			}
		}
	}
	return c.requestEligibility(ctx, route, req)
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func mmddyyyy(d string) string {
	m := dateRE.FindStringSubmatch(d)
	if m == nil {
		return d
	}
	return m[2] + "/" + m[3] + "/" + m[1]
}

func (c *Connector) requestEligibility(ctx context.Context, route eligibility.Route, req *eligibility.Request) (eligibility.Result, error) {
	patient := map[string]any{"firstName": req.Patient.FirstName, "lastName": req.Patient.LastName, "memberId": req.MemberID,
		"dob": mmddyyyy(req.Patient.BirthDate)}
	input := map[string]any{"patient": patient, "provider": map[string]any{"npi": req.ProviderNPI}, "payerId": route.VendorPayer()}
	// Dependents: the subscriber is sent when known (else tuuthfairy takes
	// the patient as the subscriber).
	if s := req.Subscriber; s != nil && s.FirstName != "" && s.LastName != "" && s.BirthDate != "" {
		input["subscriber"] = map[string]any{"firstName": s.FirstName, "lastName": s.LastName, "memberId": req.MemberID, "dob": mmddyyyy(s.BirthDate)}
	}
	var out struct {
		RequestEligibility struct {
			Result *struct {
				ID string `json:"id"`
			} `json:"result"`
			UserErrors []userError `json:"userErrors"`
		} `json:"requestEligibility"`
	}
	if err := c.gql(ctx, "RequestEligibility", map[string]any{"input": input}, &out); err != nil {
		if vendorhttp.MaybeProcessed(err) {
			// The request may have been made (and billed): tuuthfairy
			// documents neither an idempotency key nor a way to find a
			// request by this server's data, so it is not repeated.
			return eligibility.Result{}, eligibility.Unconfirmed(err)
		}
		return eligibility.Result{}, err
	}
	p := out.RequestEligibility
	if err := userErrs("request-eligibility", p.UserErrors); err != nil {
		return eligibility.Result{}, err
	}
	if p.Result == nil || p.Result.ID == "" {
		return eligibility.Result{}, errs.E("tuuthfairy.request-eligibility", errs.Transient, "tuuthfairy answered no eligibility id")
	}
	return eligibility.Result{Ref: eligPrefix + p.Result.ID, Status: "eligibility:requested"}, nil
}

// Poll implements eligibility.Connector: an eligibility ref ("elig:<id>")
// is read with eligibility(id); any other ref is a connection the check
// waits for, and once it is connected eligibility is requested.
func (c *Connector) Poll(ctx context.Context, route eligibility.Route, ref string, req *eligibility.Request) (eligibility.Result, error) {
	id, isElig := strings.CutPrefix(ref, eligPrefix)
	if !isElig {
		cn, err := c.Connection(ctx, ref)
		if err != nil {
			return eligibility.Result{}, err
		}
		if cn.Status == "connected" {
			return c.requestEligibility(ctx, route, req)
		}
		return connectionResult(cn.ID, cn.Status, cn.WebsiteID), nil
	}
	var out struct {
		Eligibility *struct {
			ID            string  `json:"id"`
			Status        string  `json:"status"`
			Active        *bool   `json:"active"`
			FailureReason *string `json:"failureReason"`
			Plan          *struct {
				Name            *string `json:"name"`
				GroupNumber     *string `json:"groupNumber"`
				EffectiveDate   *string `json:"effectiveDate"`
				TerminationDate *string `json:"terminationDate"`
			} `json:"plan"`
			Benefits []struct {
				Category            string   `json:"category"`
				ServiceType         *string  `json:"serviceType"`
				Network             *string  `json:"network"`
				Coinsurance         *float64 `json:"coinsurance"`
				Deductible          *float64 `json:"deductible"`
				DeductibleRemaining *float64 `json:"deductibleRemaining"`
				Maximum             *float64 `json:"maximum"`
				MaximumRemaining    *float64 `json:"maximumRemaining"`
			} `json:"benefits"`
		} `json:"eligibility"`
	}
	if err := c.gql(ctx, "GetEligibility", map[string]any{"id": id}, &out); err != nil {
		return eligibility.Result{}, err
	}
	e := out.Eligibility
	if e == nil {
		return eligibility.Result{}, errs.E("tuuthfairy.eligibility", errs.NotFound, "tuuthfairy no longer knows eligibility request "+id)
	}
	res := eligibility.Result{Ref: ref}
	switch e.Status {
	case "requested":
		res.Status = "eligibility:requested"
	case "failed":
		reason := ""
		if e.FailureReason != nil {
			reason = *e.FailureReason
		}
		res.Status = "eligibility:failed:" + reason
	case "ok":
		res.Status = "eligibility:ok:inactive"
		if e.Active != nil && *e.Active {
			res.Status = "eligibility:ok:active"
		}
		cov := &eligibility.Coverage{}
		if p := e.Plan; p != nil {
			cov.PlanName, cov.GroupNumber, cov.Start, cov.End = deref(p.Name), deref(p.GroupNumber), deref(p.EffectiveDate), deref(p.TerminationDate)
		}
		for _, b := range e.Benefits {
			cov.Benefits = append(cov.Benefits, eligibility.Benefit{ServiceType: deref(b.ServiceType), Name: b.Category, Network: deref(b.Network),
				Coinsurance: b.Coinsurance, Deductible: b.Deductible, DeductibleRemaining: b.DeductibleRemaining,
				Maximum: b.Maximum, MaximumRemaining: b.MaximumRemaining})
		}
		res.Coverage = cov
	default:
		res.Status = "eligibility:" + e.Status
	}
	return res, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// Webhook implements eligibility.Connector: the x-tuuthfairy-signature
// header must be a valid signature of the raw body by the key of
// webhookPublicKey (RSA PKCS#1 v1.5 or ECDSA over SHA-256, or Ed25519).
// Datasource events name a connection; eligibility events an eligibility
// request. The event id (or, without one, the body's hash) identifies the
// delivery.
func (c *Connector) Webhook(ctx context.Context, h http.Header, body []byte) ([]eligibility.Notice, error) {
	const op = "tuuthfairy.webhook"
	if err := VerifySignature(c.pub, body, h.Get("x-tuuthfairy-signature")); err != nil {
		return nil, errs.E(op, errs.Unauthorized, "the webhook signature is missing or does not verify", err)
	}
	var ev struct {
		ID    string `json:"id"`
		Event string `json:"event"`
		Data  struct {
			ConnectionID  string `json:"connectionId"`
			EligibilityID string `json:"eligibilityId"`
			Status        string `json:"status"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &ev); err != nil || ev.Event == "" {
		return nil, errs.E(op, errs.Invalid, "the webhook body is not a tuuthfairy event")
	}
	id := ev.ID
	if id == "" {
		sum := sha256.Sum256(body)
		id = fmt.Sprintf("sha256:%x", sum)
	}
	n := eligibility.Notice{DeliveryID: id, Event: ev.Event, Status: ev.Data.Status}
	switch {
	case strings.HasPrefix(ev.Event, "datasource_") && ev.Data.ConnectionID != "":
		n.Ref, n.ConnectionID = ev.Data.ConnectionID, ev.Data.ConnectionID
	case strings.HasPrefix(ev.Event, "eligibility_") && ev.Data.EligibilityID != "":
		n.Ref = eligPrefix + ev.Data.EligibilityID
	default:
		return nil, nil
	}
	return []eligibility.Notice{n}, nil
}

// VerifySignature checks a base64 signature of body with pub.
func VerifySignature(pub crypto.PublicKey, body []byte, sig64 string) error {
	if pub == nil {
		return fmt.Errorf("no webhook public key is configured")
	}
	if sig64 == "" {
		return fmt.Errorf("x-tuuthfairy-signature is missing")
	}
	sig, err := base64.StdEncoding.DecodeString(sig64)
	if err != nil {
		return fmt.Errorf("x-tuuthfairy-signature is not base64")
	}
	sum := sha256.Sum256(body)
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return rsa.VerifyPKCS1v15(k, crypto.SHA256, sum[:], sig)
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(k, sum[:], sig) {
			return fmt.Errorf("ECDSA signature does not verify")
		}
		return nil
	case ed25519.PublicKey:
		if !ed25519.Verify(k, body, sig) {
			return fmt.Errorf("Ed25519 signature does not verify")
		}
		return nil
	}
	return fmt.Errorf("unsupported public key type %T", pub)
}
