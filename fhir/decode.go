package fhir

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// readBody reads the request body, refusing more than limit bytes.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, errs.E("fhir.body", errs.TooLarge, fmt.Sprintf("the request body is larger than the %d bytes this server accepts", limit))
	}
	if err != nil {
		return nil, errs.E("fhir.body", errs.Invalid, "the request body could not be read", err)
	}
	return body, nil
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
	if issues := s.model.Validate(m); len(issues) > 0 {
		list := make([]errs.Issue, len(issues))
		for i, is := range issues {
			list[i] = errs.Issue{Code: "structure", Path: is.Path, Message: is.Message}
		}
		return nil, errs.E("fhir.parse", errs.Invalid,
			fmt.Sprintf("the %s is not valid FHIR R4 (%d problems)", doc.Type, len(issues)), list)
	}
	return doc, nil
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

// acceptable reports whether the client accepts FHIR JSON, from _format or
// the Accept header.
func acceptable(r *http.Request) bool {
	if f := r.URL.Query().Get("_format"); f != "" {
		switch strings.ToLower(f) {
		case "json", "application/json", "application/fhir+json", "application/json+fhir":
			return true
		}
		return false
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
	}
	return false
}
