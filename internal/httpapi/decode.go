package httpapi

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strconv"
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
//   - unknown fields and values of the wrong JSON type are refused with 400,
//     every one of them named in Fields at once;
//   - malformed JSON, an empty body, a bare null, a body that is not of
//     dst's JSON kind, or anything after the first JSON value are refused
//     with 400.
//
// The returned error is always an *Error, ready for WriteError. Handlers
// that validate the values further use DecodeJSONFields, so that the
// client hears of every problem in one answer.
func DecodeJSON(r *http.Request, maxBytes int64, dst any) error {
	fields, err := DecodeJSONFields(r, maxBytes, dst)
	if err != nil {
		return err
	}
	if len(fields) > 0 {
		return fieldsError(fields)
	}
	return nil
}

// DecodeJSONFields is DecodeJSON for handlers that check the values too:
// the problems of single fields (unknown fields, wrong JSON types) come
// back as fields (JSON path -> what is wrong), all of them, with dst
// holding every field that could be decoded, so that the handler can add
// its own checks' problems and answer them together (Invalid). err, an
// *Error, is for a body that cannot be read as a whole.
func DecodeJSONFields(r *http.Request, maxBytes int64, dst any) (fields map[string]string, err error) {
	ct := r.Header.Get("Content-Type")
	mt, _, perr := mime.ParseMediaType(ct)
	if ct == "" || perr != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
		return nil, Errorf(http.StatusUnsupportedMediaType, CodeUnsupportedMediaType, "Content-Type must be application/json")
	}
	if r.ContentLength > maxBytes {
		return nil, tooLarge(maxBytes)
	}
	body, rerr := io.ReadAll(io.LimitReader(r.Body, maxBytes+1))
	if rerr != nil {
		return nil, Errorf(http.StatusBadRequest, CodeInvalid, "could not read the request body")
	}
	if int64(len(body)) > maxBytes {
		return nil, tooLarge(maxBytes)
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, Errorf(http.StatusBadRequest, CodeInvalid, "request body is empty")
	}
	if bytes.Equal(trimmed, []byte("null")) {
		return nil, Errorf(http.StatusBadRequest, CodeInvalid, "request body must be a JSON object, not null")
	}

	// First the JSON as such, then each value against dst's type, so
	// that every bad field is found, not only the first.
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return nil, decodeError(err, reflect.TypeOf(dst))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, Errorf(http.StatusBadRequest, CodeInvalid, "request body has data after the JSON value")
	}
	t := reflect.TypeOf(dst)
	if t == nil || t.Kind() != reflect.Pointer {
		return nil, Errorf(http.StatusInternalServerError, CodeInternal, internalMessage)
	}
	fields = map[string]string{}
	// A name sent twice in one object is ambiguous: encoding/json keeps
	// the last value and drops the other without a word (RFC 8259
	// section 4: names SHOULD be unique, and receivers differ).
	for _, p := range duplicateNames(body, MaxFields+1) {
		fields[p] = "appears more than once in its object: send each field once"
	}
	if !checkValue(t.Elem(), tree, "", fields) {
		if msg, ok := fields[""]; ok {
			return nil, Errorf(http.StatusBadRequest, CodeInvalid, "request body %s", msg)
		}
	}
	clean, err := json.Marshal(tree)
	if err == nil {
		err = json.Unmarshal(clean, dst)
	}
	if err != nil {
		return nil, decodeError(err, t)
	}
	return fields, nil
}

// fieldsError is the 400 answer for fields that could not be decoded.
func fieldsError(fields map[string]string) *Error {
	if len(fields) == 1 {
		for f, msg := range fields {
			if msg == "unknown field" {
				return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: fmt.Sprintf("unknown field %q", f), Fields: fields}
			}
			return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: fmt.Sprintf("field %q has the wrong type", f), Fields: fields}
		}
	}
	return Invalid(fields)
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// checkValue reports whether v (decoded with UseNumber) can be decoded
// into a value of type t by encoding/json. Problems go into fields under
// their JSON path; a bad member of an object is removed from it, so that
// what remains decodes. The whole value is bad (false) only when it is
// not of t's JSON kind; the caller then drops it.
func checkValue(t reflect.Type, v any, path string, fields map[string]string) bool {
	if v == nil {
		return true // null leaves the field as it is
	}
	if t.Implements(jsonUnmarshaler) || reflect.PointerTo(t).Implements(jsonUnmarshaler) {
		return true // the type decides; a failure is reported by the decode
	}
	if t.Implements(textUnmarshaler) || reflect.PointerTo(t).Implements(textUnmarshaler) {
		return expect(t, v, path, fields, isString(v))
	}
	switch t.Kind() {
	case reflect.Pointer:
		return checkValue(t.Elem(), v, path, fields)
	case reflect.Interface:
		return true
	case reflect.String:
		return expect(t, v, path, fields, isString(v))
	case reflect.Bool:
		_, ok := v.(bool)
		return expect(t, v, path, fields, ok)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := v.(json.Number)
		if ok {
			_, err := strconv.ParseInt(string(n), 10, t.Bits())
			ok = err == nil
		}
		return expect(t, v, path, fields, ok)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := v.(json.Number)
		if ok {
			_, err := strconv.ParseUint(string(n), 10, t.Bits())
			ok = err == nil
		}
		return expect(t, v, path, fields, ok)
	case reflect.Float32, reflect.Float64:
		_, ok := v.(json.Number)
		return expect(t, v, path, fields, ok)
	case reflect.Slice, reflect.Array:
		if t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8 {
			return expect(t, v, path, fields, isString(v)) // base64
		}
		list, ok := v.([]any)
		if !expect(t, v, path, fields, ok) {
			return false
		}
		good := true
		for i, e := range list {
			good = checkValue(t.Elem(), e, fmt.Sprintf("%s[%d]", path, i), fields) && good
		}
		return good
	case reflect.Map:
		obj, ok := v.(map[string]any)
		if !expect(t, v, path, fields, ok) {
			return false
		}
		for k, e := range obj {
			if !checkValue(t.Elem(), e, join(path, k), fields) {
				delete(obj, k)
			}
		}
		return true
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !expect(t, v, path, fields, ok) {
			return false
		}
		known := jsonFields(t)
		// encoding/json matches names without regard to case, so "name"
		// and "Name" are one field sent twice.
		sent := map[string]string{}
		for _, k := range sortedKeys(obj) {
			e := obj[k]
			ft, ok := known[k]
			field := k
			if !ok {
				for name, typ := range known {
					if strings.EqualFold(name, k) {
						ft, ok, field = typ, true, name
						break
					}
				}
			}
			other, twice := sent[field]
			if ok {
				sent[field] = k
			}
			switch {
			case !ok:
				fields[join(path, k)] = "unknown field"
				delete(obj, k)
			case twice:
				fields[join(path, k)] = fmt.Sprintf("is the field %q again (names are matched without regard to case): send each field once", other)
				delete(obj, k)
				delete(obj, other)
			case !checkValue(ft, e, join(path, k), fields):
				delete(obj, k)
			}
		}
		return true
	}
	return true
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// duplicateNames returns the JSON paths (as checkValue writes them) of
// the names that appear more than once in one object of body, at most
// limit of them. body is valid JSON.
func duplicateNames(body []byte, limit int) []string {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var out []string
	var walk func(path string) error
	walk = func(path string) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return err
				}
				k, _ := kt.(string)
				p := join(path, k)
				if seen[k] && len(out) < limit && !slices.Contains(out, p) {
					out = append(out, p)
				}
				seen[k] = true
				if err := walk(p); err != nil {
					return err
				}
			}
		case json.Delim('['):
			for i := 0; dec.More(); i++ {
				if err := walk(fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
		default:
			return nil
		}
		_, err = dec.Token() // the closing delimiter
		return err
	}
	_ = walk("")
	return out
}

// expect records that the value at path is not what t takes, unless ok.
func expect(t reflect.Type, _ any, path string, fields map[string]string, ok bool) bool {
	if !ok {
		if path == "" {
			fields[""] = "must be a JSON " + jsonKind(t)
		} else {
			fields[path] = "must be " + article(jsonKind(t))
		}
	}
	return ok
}

func isString(v any) bool { _, ok := v.(string); return ok }

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// jsonFields maps the JSON names of struct t's fields, as encoding/json
// sees them (embedded structs' fields promoted, the shallowest field of a
// name winning), to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	depth := map[string]int{}
	for _, f := range reflect.VisibleFields(t) {
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				continue // its fields are promoted
			}
		}
		if !f.IsExported() && !f.Anonymous {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if d, ok := depth[name]; ok && d <= len(f.Index) {
			continue
		}
		out[name], depth[name] = f.Type, len(f.Index)
	}
	return out
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
		e.Fields = map[string]string{field: "must be " + article(jsonKind(typ.Type))}
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

// article puts "a" or "an" before a kind.
func article(kind string) string {
	if strings.IndexByte("aeiou", kind[0]) >= 0 {
		return "an " + kind
	}
	return "a " + kind
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
