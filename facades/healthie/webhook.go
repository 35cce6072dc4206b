package healthie

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/httpapi"
)

// maxWebhookBody caps a delivery; Healthie's thin payloads are a few
// hundred bytes.
const maxWebhookBody = 64 << 10

// VerifySignature checks a webhook delivery the way Healthie documents
// ("Signed payloads"): Content-Digest is "SHA-256=<hex SHA-256 of the
// body>" and must match the body; Signature is "sig1=<hex HMAC-SHA256>"
// with secret over
//
//	"<method lowercased> <path> <query> <digest> application/json <body length>"
//
// where path and query are the request's as received and digest is the
// Content-Digest value after its "=". It returns an Unauthorized error
// saying what is wrong, nil when the delivery is authentic.
func VerifySignature(secret string, r *http.Request, body []byte) error {
	const op = "healthie.webhook"
	if secret == "" {
		return errs.E(op, errs.Unauthorized, "Healthie webhooks cannot be verified: no webhook secret is configured (-healthie-webhook-secret or P2P_HEALTHIE_WEBHOOK_SECRET)")
	}
	alg, digest, ok := strings.Cut(r.Header.Get("Content-Digest"), "=")
	if !ok || !strings.EqualFold(strings.TrimSpace(alg), "SHA-256") {
		return errs.E(op, errs.Unauthorized, "the delivery has no SHA-256 Content-Digest header")
	}
	digest = strings.TrimSpace(digest)
	sum := sha256.Sum256(body)
	if got, err := hex.DecodeString(digest); err != nil || !hmac.Equal(got, sum[:]) {
		return errs.E(op, errs.Unauthorized, "the Content-Digest does not match the body")
	}
	_, sig, ok := strings.Cut(r.Header.Get("Signature"), "=")
	if !ok {
		return errs.E(op, errs.Unauthorized, "the delivery has no Signature header")
	}
	got, err := hex.DecodeString(strings.TrimSpace(sig))
	if err != nil {
		return errs.E(op, errs.Unauthorized, "the Signature is not hexadecimal")
	}
	data := strings.Join([]string{strings.ToLower(r.Method), r.URL.Path, r.URL.RawQuery, digest, "application/json", strconv.Itoa(len(body))}, " ")
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(data))
	if !hmac.Equal(got, mac.Sum(nil)) {
		return errs.E(op, errs.Unauthorized, "the Signature does not match (check the webhook secret)")
	}
	return nil
}

// event is Healthie's thin webhook payload.
type event struct {
	ResourceID     json.RawMessage `json:"resource_id"`
	ResourceIDType string          `json:"resource_id_type"`
	EventType      string          `json:"event_type"`
	ChangedFields  []string        `json:"changed_fields"`
}

// id reads resource_id, which Healthie sends as a number or a string.
func (e *event) id() (string, bool) {
	raw := bytes.TrimSpace(e.ResourceID)
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		var n json.Number
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&n); err != nil {
			return "", false
		}
		s = n.String()
	}
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 64-len(IDPrefix) {
		return "", false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '.') {
			return "", false
		}
	}
	return s, true
}

// eventKinds maps an event type's subject to the Healthie record kind.
var eventKinds = map[string]string{
	"patient":     "User",
	"appointment": "Appointment",
	"policy":      "Policy",
	"cms1500":     "Cms1500",
}

// kind says which record an event is about, "" for events the facade does
// not serve (chat messages, forms...).
func (e *event) kind() string {
	subject, _, _ := strings.Cut(e.EventType, ".")
	return eventKinds[subject]
}

// webhookResult is the JSON answer to a delivery.
type webhookResult struct {
	Event     string   `json:"event"`
	Status    string   `json:"status"` // refreshed, ignored, accepted
	Resources []string `json:"resources"`
	Detail    string   `json:"detail,omitempty"`
}

// Webhooks receives Healthie's webhooks at POST /api/webhooks/healthie.
type Webhooks struct {
	secret string
	syncer *Syncer // nil when the facade is served live only
	log    *slog.Logger
}

// ServeHTTP verifies a delivery (401 and nothing done when the signature
// is wrong or missing), then, in sync mode, refreshes the record it names
// in the local store, where the write fires matching Subscriptions. The
// refresh happens before the answer, so a 200 means the store is up to
// date; when Healthie cannot be read, the answer is 503 and Healthie
// retries the delivery. Served live, the facade reads Healthie on every
// request, so there is nothing to refresh: a verified delivery is only
// acknowledged.
func (h *Webhooks) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	const op = "healthie.webhook"
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxWebhookBody))
	if err != nil {
		httpapi.WriteError(w, errs.E(op, errs.TooLarge, fmt.Sprintf("the webhook body is larger than %d bytes", maxWebhookBody)))
		return
	}
	if err := VerifySignature(h.secret, r, body); err != nil {
		h.log.Warn("healthie: webhook refused", "remote", r.RemoteAddr, "err", err)
		httpapi.WriteError(w, err)
		return
	}
	var ev event
	if err := json.Unmarshal(body, &ev); err != nil {
		httpapi.WriteError(w, errs.E(op, errs.Invalid, "the webhook body is not Healthie's JSON payload", err))
		return
	}
	hid, ok := ev.id()
	if !ok || ev.EventType == "" {
		httpapi.WriteError(w, errs.E(op, errs.Invalid, "the webhook payload needs a resource_id and an event_type"))
		return
	}
	res := webhookResult{Event: ev.EventType, Resources: []string{}}
	kind := ev.kind()
	switch {
	case kind == "":
		res.Status, res.Detail = "ignored", "the Healthie facade does not serve "+ev.EventType+" events"
	case h.syncer == nil:
		res.Status, res.Detail = "accepted", "the facade reads Healthie live; nothing is kept to refresh"
	default:
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		changed, err := h.syncer.Refresh(ctx, kind, hid)
		if err != nil {
			h.log.Warn("healthie: webhook refresh failed; Healthie will retry", "event", ev.EventType, "id", hid, "err", err)
			httpapi.WriteError(w, errs.E(op, errs.Transient, "the record could not be refreshed from Healthie; retry later", err))
			return
		}
		res.Status = "refreshed"
		res.Resources = append(res.Resources, changed...)
	}
	h.log.Info("healthie: webhook", "event", ev.EventType, "id", hid, "status", res.Status, "resources", res.Resources)
	httpapi.WriteJSON(w, http.StatusOK, res)
}
