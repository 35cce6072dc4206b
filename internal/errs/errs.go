// Package errs is p2pserver's one error type. An error carries a Kind that
// says what went wrong in terms a client can act on; the HTTP layers (FHIR's
// OperationOutcome and the /api JSON errors) translate a Kind to a status in
// exactly one place each, and never send the wrapped Go error text.
package errs

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Kind classifies an error.
type Kind int

// The kinds, roughly in order of HTTP status.
const (
	Internal         Kind = iota // a fault of ours: 500
	Invalid                      // the request is malformed: 400
	Unauthorized                 // no or bad credentials: 401
	Permission                   // authenticated but not allowed: 403
	NotFound                     // no such resource or route: 404
	MethodNotAllowed             // 405
	NotAcceptable                // 406: the client asked for a format we do not produce
	Conflict                     // 409: version conflict or a state that forbids the change
	Gone                         // 410: deleted
	Precondition                 // 412: If-Match failed, or a conditional matched several
	TooLarge                     // 413
	UnsupportedMedia             // 415
	Unprocessable                // 422: well-formed but breaks a business rule or profile
	TooMany                      // 429
	Transient                    // 503: try again later (a peer or vendor is unreachable, the server is at a limit)
	Timeout                      // 504: a peer did not answer in time
	SlowClient                   // 408: the client did not send its request in time
)

var kindNames = map[Kind]string{
	Internal: "internal", Invalid: "invalid", Unauthorized: "unauthorized",
	Permission: "forbidden", NotFound: "not-found", MethodNotAllowed: "method-not-allowed",
	NotAcceptable: "not-acceptable", Conflict: "conflict", Gone: "gone",
	Precondition: "precondition-failed", TooLarge: "too-large", UnsupportedMedia: "unsupported-media-type",
	Unprocessable: "unprocessable", TooMany: "too-many-requests", Transient: "unavailable", Timeout: "timeout",
	SlowClient: "request-timeout",
}

// String returns a short stable name for the kind, usable as an API error code.
func (k Kind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return "internal"
}

// Issue is one problem found in a request, for OperationOutcome.issue or an
// API error's field list.
type Issue struct {
	// Code is the FHIR issue-type code (invalid, structure, required, value,
	// not-found, conflict, ...); empty means derive it from the error kind.
	Code string
	// Path is where the problem is (FHIRPath-like, or a JSON field name).
	Path string
	// Message says what is wrong in words.
	Message string
}

// Error is the error type of p2pserver.
type Error struct {
	Op      string  // the operation, for logs: "store.put"
	Kind    Kind    // what class of problem
	Message string  // safe to show to a client
	Issues  []Issue // details, each shown to the client
	Err     error   // the cause, for logs only
	// RetryAfter, when set, is when the client may try again (the
	// Retry-After header of a 429 or 503).
	RetryAfter time.Duration
}

// E builds an Error for operation op. The other arguments are interpreted by
// type: Kind sets the kind; string sets the client message; error sets the
// cause; Issue or []Issue add issues; time.Duration sets RetryAfter. A cause that is itself an *Error lends
// its kind, message and issues where they are unset.
func E(op string, args ...any) error {
	e := &Error{Op: op, Kind: -1}
	for _, a := range args {
		switch v := a.(type) {
		case Kind:
			e.Kind = v
		case string:
			e.Message = v
		case error:
			e.Err = v
		case Issue:
			e.Issues = append(e.Issues, v)
		case []Issue:
			e.Issues = append(e.Issues, v...)
		case time.Duration:
			e.RetryAfter = v
		}
	}
	var inner *Error
	if errors.As(e.Err, &inner) {
		if e.Kind < 0 {
			e.Kind = inner.Kind
		}
		if e.Message == "" {
			e.Message = inner.Message
		}
		if len(e.Issues) == 0 {
			e.Issues = inner.Issues
		}
	}
	if e.Kind < 0 {
		e.Kind = Internal
	}
	return e
}

// Errorf builds an Error of the given kind whose client message is formatted.
func Errorf(kind Kind, format string, args ...any) error {
	return &Error{Kind: kind, Message: fmt.Sprintf(format, args...)}
}

// Error implements error with the op chain and cause, for logs.
func (e *Error) Error() string {
	var b strings.Builder
	if e.Op != "" {
		b.WriteString(e.Op)
		b.WriteString(": ")
	}
	if e.Message != "" {
		b.WriteString(e.Message)
	} else {
		b.WriteString(e.Kind.String())
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// KindOf returns the kind of err: that of the outermost *Error in the chain,
// Internal for any other non-nil error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return Internal
}

// RetryAfterOf returns the first RetryAfter set in err's chain, 0 if none.
func RetryAfterOf(err error) time.Duration {
	for err != nil {
		if e, ok := err.(*Error); ok && e.RetryAfter > 0 {
			return e.RetryAfter
		}
		err = errors.Unwrap(err)
	}
	return 0
}

// Is reports whether err is an *Error of kind k.
func Is(err error, k Kind) bool { return err != nil && KindOf(err) == k }

// Public returns the message and issues of err that are safe to show a
// client. For errors that are not *Error, or internal ones without a message,
// it returns a generic sentence.
func Public(err error) (string, []Issue) {
	var e *Error
	if !errors.As(err, &e) {
		return "internal server error", nil
	}
	msg := e.Message
	if msg == "" {
		if e.Kind == Internal {
			msg = "internal server error"
		} else {
			msg = e.Kind.String()
		}
	}
	return msg, e.Issues
}
