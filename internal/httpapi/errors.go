// Package httpapi holds the conventions every /api handler follows: JSON
// errors of one shape, strict JSON request decoding, bearer-token roles, and a
// router whose 404 and 405 answers are JSON too.
//
// Every error a client sees has the shape
//
//	{"error": {"code": "invalid", "message": "...", "fields": {"issuer": "already registered"}}}
//
// and is produced in one place, WriteError. Go error strings never reach a
// client: an error that is not an *Error is logged and answered with a
// generic 500.
package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/p2pserver/p2pserver/internal/errs"
)

// Error codes. They are the names of the errs kinds (errs.Kind.String()), so
// a code means the same whichever package produced the error.
const (
	CodeInvalid              = "invalid"                // 400: malformed body or a value failed validation; see fields
	CodeUnauthorized         = "unauthorized"           // 401: no or bad bearer token
	CodeForbidden            = "forbidden"              // 403: not allowed, or the operation is not configured
	CodeNotFound             = "not-found"              // 404
	CodeMethodNotAllowed     = "method-not-allowed"     // 405
	CodeConflict             = "conflict"               // 409: clashes with stored state
	CodeTooLarge             = "too-large"              // 413
	CodeUnsupportedMediaType = "unsupported-media-type" // 415
	CodeInternal             = "internal"               // 500
)

// Error is an error meant for the client: its Status, Code, Message and Fields
// are sent as they are. Fields maps a JSON field name of the request to what is
// wrong with it.
type Error struct {
	Status  int
	Code    string
	Message string
	Fields  map[string]string
}

func (e *Error) Error() string {
	if len(e.Fields) > 0 {
		return fmt.Sprintf("%d %s: %s %v", e.Status, e.Code, e.Message, e.Fields)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
}

// Errorf builds an *Error with a formatted message.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Invalid builds the 400 answer for values that failed validation.
func Invalid(fields map[string]string) *Error {
	return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: "request has invalid fields", Fields: fields}
}

// NotFound builds a 404 answer.
func NotFound(format string, args ...any) *Error {
	return Errorf(http.StatusNotFound, CodeNotFound, format, args...)
}

type errorBody struct {
	Error errorJSON `json:"error"`
}

type errorJSON struct {
	Code    string            `json:"code"`
	Message string            `json:"message"`
	Fields  map[string]string `json:"fields,omitempty"`
}

// WriteError answers with err, the one place /api turns errors into statuses:
//
//   - an *Error (also when wrapped) is sent as it is;
//   - an *errs.Error gets the status of its kind (StatusOf), its kind name as
//     code, its public message, and its issues as fields (path -> message);
//     an internal one is logged;
//   - anything else is logged with slog.Default and answered with a 500 whose
//     message says nothing about the cause.
//
// At most MaxFields fields are listed, the first in the order of their
// names; the message says how many more there are.
func WriteError(w http.ResponseWriter, err error) {
	e := bounded(toError(err))
	if d := errs.RetryAfterOf(err); d > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((d+time.Second-1)/time.Second)))
	}
	WriteJSON(w, e.Status, errorBody{Error: errorJSON{Code: e.Code, Message: e.Message, Fields: e.Fields}})
}

// MaxFields is the most field problems one error answer lists, so that
// the answer to a body with thousands of bad fields stays small.
const MaxFields = 100

// bounded returns e with at most MaxFields fields.
func bounded(e *Error) *Error {
	if len(e.Fields) <= MaxFields {
		return e
	}
	names := make([]string, 0, len(e.Fields))
	for f := range e.Fields {
		names = append(names, f)
	}
	sort.Strings(names)
	out := *e
	out.Fields = make(map[string]string, MaxFields)
	for _, f := range names[:MaxFields] {
		out.Fields[f] = e.Fields[f]
	}
	out.Message = fmt.Sprintf("%s (%d problems; the first %d are listed)", e.Message, len(e.Fields), MaxFields)
	return &out
}

// toError converts err into the client answer, logging what must not be sent.
func toError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var ke *errs.Error
	if errors.As(err, &ke) {
		kind := errs.KindOf(err)
		if kind == errs.Internal {
			slog.Default().Error("api: internal error", "err", err)
		}
		msg, issues := errs.Public(err)
		out := &Error{Status: StatusOf(kind), Code: kind.String(), Message: msg}
		for _, is := range issues {
			if out.Fields == nil {
				out.Fields = map[string]string{}
			}
			key := is.Path
			if key == "" {
				key = "_"
			}
			if prev, ok := out.Fields[key]; ok {
				out.Fields[key] = prev + "; " + is.Message
			} else {
				out.Fields[key] = is.Message
			}
		}
		return out
	}
	slog.Default().Error("api: internal error", "err", err)
	return &Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: internalMessage}
}

const internalMessage = "internal server error; the cause is in the server log"

// StatusOf is the HTTP status of an error kind on /api.
func StatusOf(k errs.Kind) int {
	switch k {
	case errs.Invalid:
		return http.StatusBadRequest
	case errs.Unauthorized:
		return http.StatusUnauthorized
	case errs.Permission:
		return http.StatusForbidden
	case errs.NotFound:
		return http.StatusNotFound
	case errs.MethodNotAllowed:
		return http.StatusMethodNotAllowed
	case errs.NotAcceptable:
		return http.StatusNotAcceptable
	case errs.Conflict:
		return http.StatusConflict
	case errs.Gone:
		return http.StatusGone
	case errs.Precondition:
		return http.StatusPreconditionFailed
	case errs.TooLarge:
		return http.StatusRequestEntityTooLarge
	case errs.UnsupportedMedia:
		return http.StatusUnsupportedMediaType
	case errs.Unprocessable:
		return http.StatusUnprocessableEntity
	case errs.TooMany:
		return http.StatusTooManyRequests
	case errs.Transient:
		return http.StatusServiceUnavailable
	case errs.Timeout:
		return http.StatusGatewayTimeout
	case errs.SlowClient:
		return http.StatusRequestTimeout
	}
	return http.StatusInternalServerError
}

// WriteJSON answers with status and v encoded as JSON. v is encoded before the
// status is written, so an encoding failure still yields a clean 500.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		slog.Default().Error("api: encode response", "err", err)
		status = http.StatusInternalServerError
		body = []byte(`{"error":{"code":"internal","message":"` + internalMessage + `"}}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
}
