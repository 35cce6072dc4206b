package eligibility

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

// Config is the eligibility configuration: the routing table, each vendor's
// settings (kept raw here; each vendor package decodes its own), and the
// worker's timing. It is read from the JSON file named by
// -eligibility-config; see LoadConfig.
type Config struct {
	// Routes maps payer ids to vendors. Several vendors may be configured
	// at once, each serving its own payers.
	Routes []Route `json:"routes"`
	// Vendors holds each vendor's settings by vendor name ("sohar",
	// "verifytreatment", "tuuthfairy"), decoded by the vendor package.
	Vendors map[string]json.RawMessage `json:"vendors"`

	// SubmitWait is how long $submit waits for the vendor's answer before
	// answering 202 with the Task. Default 20s.
	SubmitWait Duration `json:"submitWait"`
	// PollInterval is the first delay before polling a vendor for an
	// asynchronous answer; it doubles up to MaxPollInterval. Defaults 5s
	// and 10m. A vendor webhook makes the poll happen at once.
	PollInterval    Duration `json:"pollInterval"`
	MaxPollInterval Duration `json:"maxPollInterval"`
	// RetryBackoff is the delay after the first transient failure (timeout,
	// connection refused, 5xx); it doubles with each further one. Default 2s.
	RetryBackoff Duration `json:"retryBackoff"`
	// MaxAttempts bounds the calls made for one step of a check when each
	// fails transiently; then the check fails with "payer could not be
	// reached". Default 4.
	MaxAttempts int `json:"maxAttempts"`
	// MaxWait is how long a check may wait for an asynchronous vendor
	// answer in all. Default 72h (Sohar gives up on a payer after 24h).
	MaxWait Duration `json:"maxWait"`
	// ConfirmWait is how long a check whose create call went unconfirmed
	// (it may have been carried out) waits for the vendor's webhook naming
	// it, for vendors whose webhooks do (Sohar), before it fails rather
	// than create again. Default 10m.
	ConfirmWait Duration `json:"confirmWait"`
	// Concurrency is how many vendor calls run at once. Default 4.
	Concurrency int `json:"concurrency"`
}

// Route sends the eligibility requests of one payer to one vendor.
type Route struct {
	// PayerID is the payer's identifier as FHIR clients send it: an
	// identifier value of the request's insurer Organization (or of the
	// Coverage's payor).
	PayerID string `json:"payerId"`
	// Vendor names the connector ("sohar", "verifytreatment", "tuuthfairy").
	Vendor string `json:"vendor"`
	// VendorPayerID is the vendor's id for the payer (Sohar payer list,
	// VerifyTreatment vtx_payer_id, tuuthfairy payerId); default PayerID.
	VendorPayerID string `json:"vendorPayerId,omitempty"`
	// Name is the payer's name, for messages.
	Name string `json:"name,omitempty"`
	// RequiredFields are fields this payer needs beyond what the vendor
	// requires (see Field), checked before any vendor call.
	RequiredFields []Field `json:"requiredFields,omitempty"`
	// PlaceOfService and Specialty are used when a request's items carry
	// none (for example a telehealth practice: "10" and "PSY").
	PlaceOfService string `json:"placeOfService,omitempty"`
	Specialty      string `json:"specialty,omitempty"`
	// ServiceType is the X12 service type code used when an item has no
	// category; default "30" (health benefit plan coverage).
	ServiceType string `json:"serviceType,omitempty"`
	// WebsiteID is the tuuthfairy payer-portal website whose datasource
	// connection (by provider NPI) the payer's checks rely on.
	WebsiteID string `json:"websiteId,omitempty"`
	// Facility is the VerifyTreatment facility id ("ACCOUNT_DEFAULT" when
	// empty).
	Facility string `json:"facility,omitempty"`
}

// VendorPayer returns the vendor's id for the route's payer.
func (r Route) VendorPayer() string {
	if r.VendorPayerID != "" {
		return r.VendorPayerID
	}
	return r.PayerID
}

// Label names the payer for messages: "Aetna (60054)" or "60054".
func (r Route) Label() string {
	if r.Name != "" {
		return fmt.Sprintf("%s (%s)", r.Name, r.PayerID)
	}
	return r.PayerID
}

// Duration is a time.Duration written in JSON as a Go duration string
// ("20s", "1m30s").
type Duration time.Duration

// UnmarshalJSON accepts "20s" style strings.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string like \"20s\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("%q is not a duration like \"20s\"", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d Duration) or(def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return time.Duration(d)
}

// LoadConfig reads the configuration file at path. An empty path gives an
// empty configuration: no routes, so every eligibility request is refused
// with "no vendor is configured for this payer".
func LoadConfig(path string) (Config, error) {
	if path == "" {
		return Config{}, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("eligibility config: %w", err)
	}
	return ParseConfig(b)
}

// ParseConfig decodes and checks a configuration. Unknown fields are
// refused so that a misspelt setting is not silently ignored.
func ParseConfig(b []byte) (Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Config{}, fmt.Errorf("eligibility config: %w", err)
	}
	return c, c.Check()
}

// Check reports the first problem of the routing table: a route without a
// payer id or vendor, a payer routed twice, a vendor without settings, or
// an unknown required field.
func (c Config) Check() error {
	seen := map[string]bool{}
	for i, r := range c.Routes {
		switch {
		case strings.TrimSpace(r.PayerID) == "":
			return fmt.Errorf("eligibility config: route %d has no payerId", i+1)
		case r.Vendor == "":
			return fmt.Errorf("eligibility config: route for payer %s has no vendor", r.PayerID)
		case seen[r.PayerID]:
			return fmt.Errorf("eligibility config: payer %s is routed twice", r.PayerID)
		}
		if _, ok := c.Vendors[r.Vendor]; !ok {
			return fmt.Errorf("eligibility config: payer %s is routed to vendor %q, which has no settings under \"vendors\"", r.PayerID, r.Vendor)
		}
		for _, f := range r.RequiredFields {
			if _, ok := fieldPaths[f]; !ok {
				return fmt.Errorf("eligibility config: payer %s requires unknown field %q (known: %s)", r.PayerID, f, strings.Join(knownFields(), ", "))
			}
		}
		seen[r.PayerID] = true
	}
	return nil
}

// DecodeVendor decodes the settings of vendor into dst strictly. It
// reports false when the configuration has no settings for the vendor.
func (c Config) DecodeVendor(vendor string, dst any) (bool, error) {
	raw, ok := c.Vendors[vendor]
	if !ok {
		return false, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return true, fmt.Errorf("eligibility config: vendors.%s: %w", vendor, err)
	}
	return true, nil
}

// Secret resolves a secret setting: "env:NAME" reads the environment
// variable NAME (so the file need not hold the secret), anything else is
// the value itself.
func Secret(v string) string {
	if name, ok := strings.CutPrefix(v, "env:"); ok {
		return os.Getenv(name)
	}
	return v
}

func knownFields() []string {
	var out []string
	for f := range fieldPaths {
		out = append(out, string(f))
	}
	sort.Strings(out)
	return out
}
