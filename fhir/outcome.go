package fhir

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/p2pserver/p2pserver/internal/errs"
)

// OperationOutcome is the FHIR resource for errors and warnings.
type OperationOutcome struct {
	ResourceType string    `json:"resourceType"`
	Issue        []OOIssue `json:"issue"`
}

// OOIssue is one OperationOutcome.issue.
type OOIssue struct {
	Severity    string   `json:"severity"`
	Code        string   `json:"code"`
	Diagnostics string   `json:"diagnostics,omitempty"`
	Expression  []string `json:"expression,omitempty"`
}

// statusOf is the one place an error kind becomes an HTTP status and a
// FHIR issue type.
func statusOf(k errs.Kind) (int, string) {
	switch k {
	case errs.Invalid:
		return http.StatusBadRequest, "invalid"
	case errs.Unauthorized:
		return http.StatusUnauthorized, "login"
	case errs.Permission:
		return http.StatusForbidden, "forbidden"
	case errs.NotFound:
		return http.StatusNotFound, "not-found"
	case errs.MethodNotAllowed:
		return http.StatusMethodNotAllowed, "not-supported"
	case errs.NotAcceptable:
		return http.StatusNotAcceptable, "not-supported"
	case errs.Conflict:
		return http.StatusConflict, "conflict"
	case errs.Gone:
		return http.StatusGone, "deleted"
	case errs.Precondition:
		return http.StatusPreconditionFailed, "conflict"
	case errs.TooLarge:
		return http.StatusRequestEntityTooLarge, "too-costly"
	case errs.UnsupportedMedia:
		return http.StatusUnsupportedMediaType, "not-supported"
	case errs.Unprocessable:
		return http.StatusUnprocessableEntity, "processing"
	case errs.TooMany:
		return http.StatusTooManyRequests, "throttled"
	case errs.Transient:
		return http.StatusServiceUnavailable, "transient"
	case errs.Timeout:
		return http.StatusGatewayTimeout, "timeout"
	case errs.SlowClient:
		return http.StatusRequestTimeout, "timeout"
	}
	return http.StatusInternalServerError, "exception"
}

// Outcome builds the OperationOutcome for err and its HTTP status. Only the
// public parts of err are used; internal errors read "internal server error".
func Outcome(err error) (int, *OperationOutcome) {
	kind := errs.KindOf(err)
	status, code := statusOf(kind)
	msg, issues := errs.Public(err)
	oo := &OperationOutcome{ResourceType: "OperationOutcome"}
	if len(issues) == 0 {
		oo.Issue = []OOIssue{{Severity: "error", Code: code, Diagnostics: msg}}
	}
	for _, is := range issues {
		c := is.Code
		if c == "" {
			c = code
		}
		oi := OOIssue{Severity: "error", Code: c, Diagnostics: is.Message}
		if is.Path != "" {
			oi.Expression = []string{is.Path}
		}
		oo.Issue = append(oo.Issue, oi)
	}
	return status, oo
}

// Info builds an informational OperationOutcome.
func Info(msg string) *OperationOutcome {
	return &OperationOutcome{ResourceType: "OperationOutcome", Issue: []OOIssue{{Severity: "information", Code: "informational", Diagnostics: msg}}}
}

// WriteError answers with the OperationOutcome for err. Internal errors are
// logged with their cause; the client sees only a generic sentence.
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	status, oo := Outcome(err)
	retry := errs.RetryAfterOf(err)
	if retry > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((retry+time.Second-1)/time.Second)))
	}
	// A refusal at a limit (it says when to retry) or the answer to a
	// client that has gone is not a fault to log.
	if status >= 500 && retry == 0 && r.Context().Err() == nil {
		slog.ErrorContext(r.Context(), "fhir request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, status, oo)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var body []byte
	var err error
	if b, ok := v.(*Bundle); ok {
		body, err = b.Encode()
	} else {
		body, err = json.Marshal(v)
	}
	if err != nil {
		status, body = http.StatusInternalServerError, []byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception","diagnostics":"internal server error"}]}`)
	}
	writeBody(w, status, body)
}

func writeBody(w http.ResponseWriter, status int, body []byte) {
	w.Header()["Content-Type"] = []string{contentType}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

const contentType = "application/fhir+json; charset=utf-8"
