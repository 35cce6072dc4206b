package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strings"
)

// DefaultMaxBody is the request body cap for /api JSON requests: far above
// any OIDC server definition or batch job request, far below what would
// strain memory.
const DefaultMaxBody = 1 << 20

// DecodeJSON reads r's body into dst, strictly:
//
//   - the Content-Type must be application/json (or a +json type): else 415;
//   - the body may be at most maxBytes long: else 413;
//   - unknown fields are refused with 400 naming the field;
//   - malformed JSON, a wrong type, an empty body, a bare null, or anything
//     after the first JSON value are refused with 400.
//
// The returned error is always an *Error, ready for WriteError.
func DecodeJSON(r *http.Request, maxBytes int64, dst any) error {
	ct := r.Header.Get("Content-Type")
	mt, _, err := mime.ParseMediaType(ct)
	if ct == "" || err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
		return Errorf(http.StatusUnsupportedMediaType, CodeUnsupportedMediaType, "Content-Type must be application/json")
	}
	if r.ContentLength > maxBytes {
		return tooLarge(maxBytes)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBytes+1))
	if err != nil {
		return Errorf(http.StatusBadRequest, CodeInvalid, "could not read the request body")
	}
	if int64(len(body)) > maxBytes {
		return tooLarge(maxBytes)
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return Errorf(http.StatusBadRequest, CodeInvalid, "request body is empty")
	}
	if bytes.Equal(trimmed, []byte("null")) {
		return Errorf(http.StatusBadRequest, CodeInvalid, "request body must be a JSON object, not null")
	}

	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return decodeError(err, reflect.TypeOf(dst))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Errorf(http.StatusBadRequest, CodeInvalid, "request body has data after the JSON value")
	}
	return nil
}

func tooLarge(maxBytes int64) *Error {
	return Errorf(http.StatusRequestEntityTooLarge, CodeTooLarge, "request body is larger than %d bytes", maxBytes)
}

// decodeError turns an encoding/json error into a client answer that names the
// problem without echoing Go internals.
func decodeError(err error, dst reflect.Type) *Error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return Errorf(http.StatusBadRequest, CodeInvalid, "malformed JSON at byte %d", syn.Offset)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return Errorf(http.StatusBadRequest, CodeInvalid, "malformed JSON: unexpected end of body")
	case errors.As(err, &typ):
		if typ.Field == "" {
			return Errorf(http.StatusBadRequest, CodeInvalid, "request body must be a JSON %s", jsonKind(typ.Type))
		}
		field := jsonPath(dst, typ.Field)
		e := Errorf(http.StatusBadRequest, CodeInvalid, "field %q has the wrong type", field)
		e.Fields = map[string]string{field: "must be a " + jsonKind(typ.Type)}
		return e
	}
	// encoding/json reports unknown fields only as text: `json: unknown field "x"`.
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		name = strings.Trim(name, `"`)
		e := Errorf(http.StatusBadRequest, CodeInvalid, "unknown field %q", name)
		e.Fields = map[string]string{name: "unknown field"}
		return e
	}
	return Errorf(http.StatusBadRequest, CodeInvalid, "request body is not valid JSON for this operation")
}

// jsonPath turns encoding/json's field path, which names embedded structs by
// their Go type ("Server.scopes"), into the path the client wrote ("scopes").
func jsonPath(t reflect.Type, path string) string {
	var out []string
	for _, seg := range strings.Split(path, ".") {
		for t != nil && t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		if t != nil && t.Kind() == reflect.Struct {
			if f, ok := t.FieldByName(seg); ok && f.Anonymous && f.Tag.Get("json") == "" {
				t = f.Type
				continue // promoted fields: the embedded struct is not in the JSON
			}
			t = fieldType(t, seg)
		} else {
			t = nil
		}
		out = append(out, seg)
	}
	return strings.Join(out, ".")
}

// fieldType is the type of the field of struct t whose JSON name is name, or nil.
func fieldType(t reflect.Type, name string) reflect.Type {
	for _, f := range reflect.VisibleFields(t) {
		tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tag == name || (tag == "" && f.Name == name) {
			return f.Type
		}
	}
	return nil
}

// jsonKind names a Go type the way a JSON client thinks of it.
func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Slice, reflect.Array:
		return "array"
	case reflect.Struct, reflect.Map:
		return "object"
	}
	return "value of another type"
}
