package fhir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"slices"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// readBody reads the request body, refusing more than limit bytes, and
// more JSON values than the decoding budget that limit implies (see
// ValueBudget): decoding is what costs memory, and a body of tiny values
// ("[0,0,0,...]") costs tens of times its size to decode.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, errs.E("fhir.body", errs.TooLarge, fmt.Sprintf("the request body is larger than the %d bytes this server accepts", limit))
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, errs.E("fhir.body", errs.SlowClient, "the request body was not sent in time (-read-timeout)", err)
	}
	if err != nil {
		return nil, errs.E("fhir.body", errs.Invalid, "the request body could not be read", err)
	}
	if budget := ValueBudget(limit); CountJSONValues(body, budget) > budget {
		return nil, errs.E("fhir.body", errs.TooLarge, fmt.Sprintf(
			"the request body has more than %d JSON values, the decoding budget of this server (one value per %d bytes of -max-body, at least %d); send fewer, larger values or split the request", budget, bytesPerValue, minValueBudget))
	}
	return body, nil
}

// ReadBody reads a FHIR request body as the core's handlers do: at most
// limit bytes (413 past it), within the decoding budget limit implies
// (413), in time (408). Packages serving FHIR operations use it.
func ReadBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	return readBody(w, r, limit)
}

// bytesPerValue sets the decoding budget: FHIR JSON as clients send it
// has one value per 20 to 30 bytes; the budget allows one per 16 bytes of
// the body limit, whatever the body's own size.
const bytesPerValue = 16

// ValueBudget is the most JSON values (objects, arrays, strings, numbers,
// literals; not member names) a request body may hold under a body limit
// of limit bytes.
func ValueBudget(limit int64) int { return int(max(limit/bytesPerValue, minValueBudget)) }

// minValueBudget is the least decoding budget, whatever the body limit:
// a small -max-body (under 16 KiB) still admits this many values.
const minValueBudget = 1024

// CountJSONValues counts the JSON values in data, stopping once it has
// counted more than stop. data need not be valid JSON (the decoder
// decides that); the count is then approximate.
func CountJSONValues(data []byte, stop int) int {
	n := 0
	for i := 0; i < len(data) && n <= stop; i++ {
		switch c := data[i]; {
		case c == '"':
			j := i + 1
			for j < len(data) && data[j] != '"' {
				if data[j] == '\\' {
					j++
				}
				j++
			}
			k := j + 1
			for k < len(data) && (data[k] == ' ' || data[k] == '\t' || data[k] == '\r' || data[k] == '\n') {
				k++
			}
			if k >= len(data) || data[k] != ':' {
				n++ // a string value, not a member name
			}
			i = j
		case c == '{' || c == '[':
			n++
		case c == '-' || c >= '0' && c <= '9' || c == 't' || c == 'f' || c == 'n':
			n++
			for i+1 < len(data) && !strings.ContainsRune(",]} \t\r\n", rune(data[i+1])) {
				i++
			}
		}
	}
	return n
}

// checkContentType accepts FHIR JSON and plain JSON (any charset param).
func checkContentType(r *http.Request) error {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return nil // lenient: many clients omit it; the body must still be JSON
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return errs.E("fhir.content-type", errs.UnsupportedMedia, fmt.Sprintf("Content-Type %q cannot be parsed", ct))
	}
	switch mt {
	case "application/fhir+json", "application/json", "application/json+fhir":
		return nil
	}
	return errs.E("fhir.content-type", errs.UnsupportedMedia,
		fmt.Sprintf("Content-Type %s is not supported; send application/fhir+json", mt))
}

// decodeJSON decodes one JSON object, numbers kept as written.
func decodeJSON(body []byte) (map[string]any, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, errs.E("fhir.decode", errs.Invalid, "the body is empty; a JSON resource is required")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errs.E("fhir.decode", errs.Invalid, "the body has data after the JSON value")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errs.E("fhir.decode", errs.Invalid, "the body is not a JSON object")
	}
	return m, nil
}

func jsonError(err error) error {
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return errs.E("fhir.decode", errs.Invalid, fmt.Sprintf("the body is not valid JSON (syntax error at byte %d)", se.Offset), err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errs.E("fhir.decode", errs.Invalid, "the body is not valid JSON (it ends too early)", err)
	}
	return errs.E("fhir.decode", errs.Invalid, "the body is not valid JSON", err)
}

// parseResource decodes and structurally validates a resource body.
// wantType, when set, is the type the URL names.
func (s *Server) parseResource(body []byte, wantType string) (*store.Doc, error) {
	m, err := decodeJSON(body)
	if err != nil {
		return nil, err
	}
	return s.docFrom(m, body, wantType)
}

func (s *Server) docFrom(m map[string]any, raw []byte, wantType string) (*store.Doc, error) {
	doc, err := s.docOf(m, raw, wantType)
	if err != nil {
		return nil, err
	}
	if issues, more := s.model.ValidateN(m, maxIssues); len(issues) > 0 {
		return nil, errs.E("fhir.parse", errs.Invalid,
			fmt.Sprintf("the %s is not valid FHIR R4 (%d problems)", doc.Type, len(issues)+more), structureIssues(issues, more))
	}
	return doc, nil
}

// maxIssues is the most structural problems an answer lists.
const maxIssues = 100

// structureIssues lists validation problems as OperationOutcome issues,
// with a last one saying how many more were found and not listed.
func structureIssues(issues []spec.Issue, more int) []errs.Issue {
	list := make([]errs.Issue, len(issues), len(issues)+1)
	for i, is := range issues {
		list[i] = errs.Issue{Code: "structure", Path: is.Path, Message: is.Message}
	}
	if more > 0 {
		list = append(list, errs.Issue{Code: "too-costly", Message: fmt.Sprintf(
			"%d more problems were found and are not listed; only the first %d are", more, len(issues))})
	}
	return list
}

// docOf checks a decoded resource's type, without structural validation
// (done already, with the Bundle it came in).
func (s *Server) docOf(m map[string]any, raw []byte, wantType string) (*store.Doc, error) {
	rt, _ := m["resourceType"].(string)
	switch {
	case rt == "":
		return nil, errs.E("fhir.parse", errs.Invalid, "the resource has no resourceType")
	case !s.model.IsResource(rt):
		return nil, errs.E("fhir.parse", errs.Invalid, fmt.Sprintf("%q is not a FHIR R4 resource type", rt))
	case wantType != "" && rt != wantType:
		return nil, errs.E("fhir.parse", errs.Invalid, fmt.Sprintf("the resource is a %s but the URL is for %s", rt, wantType))
	}
	id, _ := m["id"].(string)
	return &store.Doc{Type: rt, ID: id, Map: m, JSON: raw}, nil
}

// acceptable reports whether the client accepts FHIR JSON (or one of the
// media types also names), from _format or the Accept header.
func acceptable(r *http.Request, also ...string) bool {
	// Most requests have no query: nothing to parse.
	if r.URL.RawQuery != "" {
		if f := r.URL.Query().Get("_format"); f != "" {
			switch strings.ToLower(f) {
			case "json", "application/json", "application/fhir+json", "application/json+fhir":
				return true
			}
			return false
		}
	}
	accept := r.Header.Get("Accept")
	if accept == "" {
		return true
	}
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		if q, ok := params["q"]; ok && (q == "0" || q == "0.0" || q == "0.00" || q == "0.000") {
			continue
		}
		switch mt {
		case "*/*", "application/*", "application/json", "application/fhir+json", "application/json+fhir":
			return true
		}
		if slices.Contains(also, mt) {
			return true
		}
	}
	return false
}
