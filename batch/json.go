package batch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/go-json-experiment/json/jsontext"
)

// Pages and resources are read with jsontext, in place and in order:
// decoding a thousand resources a page with encoding/json's reflection
// costs more than all the rest of preparing them.

// lenient reads what encoding/json reads: duplicate member names (the last
// wins when decoded) and, where asked, invalid UTF-8 (replaced by U+FFFD).
var (
	pageOptions = []jsontext.Options{jsontext.AllowDuplicateNames(true)}
	lenient     = []jsontext.Options{jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true)}
)

// jsonReader reads one JSON text held in memory.
type jsonReader struct {
	buf bytes.Buffer
	dec jsontext.Decoder
	// names holds the member names read so far (kept with the reader
	// in its pool): FHIR JSON uses few, again and again, and decoding a
	// resource makes a string of each name of each object otherwise.
	names map[string]string
}

// maxNames bounds jsonReader.names: beyond it, new names are not kept.
const maxNames = 1024

// name reads the next object member name.
func (r *jsonReader) name() (string, error) {
	raw, err := r.dec.ReadValue()
	if err != nil {
		return "", err
	}
	b := raw[1 : len(raw)-1] // a name is a string, quoted
	if bytes.IndexByte(b, '\\') >= 0 {
		u, err := jsontext.AppendUnquote(nil, raw)
		return string(u), err
	}
	if s, ok := r.names[string(b)]; ok {
		return s, nil
	}
	s := string(b)
	if r.names == nil {
		r.names = make(map[string]string, 64)
	}
	if len(r.names) < maxNames {
		r.names[s] = s
	}
	return s, nil
}

var jsonReaders = sync.Pool{New: func() any { return new(jsonReader) }}

// readJSON returns a reader of src; release it when done.
func readJSON(src []byte, opts []jsontext.Options) *jsonReader {
	r := jsonReaders.Get().(*jsonReader)
	// A bytes.Buffer is read in place, not copied.
	r.buf = *bytes.NewBuffer(src)
	r.dec.Reset(&r.buf, opts...)
	return r
}

func (r *jsonReader) release() {
	r.buf = bytes.Buffer{}
	r.dec.Reset(&r.buf)
	jsonReaders.Put(r)
}

// end reads the end of the input: anything after the value is an error.
func (r *jsonReader) end() error {
	switch _, err := r.dec.ReadToken(); err {
	case io.EOF:
		return nil
	case nil:
		return errors.New("data after the JSON value")
	default:
		return err
	}
}

// raw reads the next value and returns it as a slice of src.
func (r *jsonReader) raw(src []byte) ([]byte, error) {
	v, err := r.dec.ReadValue()
	if err != nil {
		return nil, err
	}
	end := int(r.dec.InputOffset())
	return src[end-len(v) : end : end], nil
}

// decodeJSON decodes one JSON value that must be all of src, to the values
// json.Decoder with UseNumber gives (map[string]any, []any, string,
// json.Number, bool, nil). refs, when not nil, collects every object with
// a string member named "reference" (a Reference), to rewrite it without a
// walk.
func decodeJSON(src []byte, refs *[]map[string]any) (any, error) {
	r := readJSON(src, pageOptions)
	defer r.release()
	v, err := r.value(refs)
	if err != nil {
		return nil, err
	}
	if err := r.end(); err != nil {
		return nil, err
	}
	return v, nil
}

func (r *jsonReader) value(refs *[]map[string]any) (any, error) {
	d := &r.dec
	tok, err := d.ReadToken()
	if err != nil {
		return nil, err
	}
	switch tok.Kind() {
	case '{':
		m := make(map[string]any, 8)
		for d.PeekKind() != '}' {
			key, err := r.name()
			if err != nil {
				return nil, err
			}
			v, err := r.value(refs)
			if err != nil {
				return nil, err
			}
			m[key] = v
			if refs != nil && key == "reference" {
				if _, ok := v.(string); ok {
					*refs = append(*refs, m)
				}
			}
		}
		_, err := d.ReadToken()
		return m, err
	case '[':
		a := make([]any, 0, 4)
		for d.PeekKind() != ']' {
			v, err := r.value(refs)
			if err != nil {
				return nil, err
			}
			a = append(a, v)
		}
		_, err := d.ReadToken()
		return a, err
	case '"':
		return tok.String(), nil
	case '0':
		return json.Number(tok.String()), nil
	case 't':
		return true, nil
	case 'f':
		return false, nil
	}
	return nil, nil // null
}

// str reads a value, and returns it if it is a string.
func (r *jsonReader) str() (string, error) {
	if r.dec.PeekKind() != '"' {
		return "", r.dec.SkipValue()
	}
	tok, err := r.dec.ReadToken()
	return tok.String(), err
}

var errNotObject = fmt.Errorf("not a JSON object")

// envelope is a page read without decoding its resources: each entry's
// resource is a slice of the page.
type envelope struct {
	resourceType, typ string
	links             []bundleLink
	issues            []issue
	entries           []envEntry
}

type bundleLink struct{ relation, url string }

type issue struct{ severity, code, diagnostics string }

type envEntry struct {
	fullURL, mode string
	resource      []byte
}

// readEnvelope reads a page: a Bundle's type, links and entries, or the
// resourceType and issues of whatever else it is. A page that is not JSON,
// not UTF-8 or not an object is an error (a *jsontext.SyntacticError, or
// io.ErrUnexpectedEOF where it ends early, for what is not JSON).
func readEnvelope(body []byte) (*envelope, error) {
	r := readJSON(body, pageOptions)
	defer r.release()
	d := &r.dec
	if d.PeekKind() != '{' {
		if err := d.SkipValue(); err != nil {
			return nil, err
		}
		return nil, errNotObject
	}
	env := &envelope{}
	err := r.members(func(key string) error {
		var err error
		switch key {
		case "resourceType":
			env.resourceType, err = r.str()
		case "type":
			env.typ, err = r.str()
		case "link", "issue":
			v, err := r.value(nil)
			if err != nil {
				return err
			}
			list, _ := v.([]any)
			for _, e := range list {
				m, _ := e.(map[string]any)
				s := func(k string) string { x, _ := m[k].(string); return x }
				if key == "link" {
					env.links = append(env.links, bundleLink{s("relation"), s("url")})
				} else {
					env.issues = append(env.issues, issue{s("severity"), s("code"), s("diagnostics")})
				}
			}
		case "entry":
			if d.PeekKind() != '[' {
				return d.SkipValue() // not an array: no entries
			}
			if _, err := d.ReadToken(); err != nil {
				return err
			}
			for d.PeekKind() != ']' {
				var e envEntry
				if d.PeekKind() != '{' {
					if err := d.SkipValue(); err != nil {
						return err
					}
				} else if err := r.members(func(k string) (err error) {
					switch k {
					case "fullUrl":
						e.fullURL, err = r.str()
					case "resource":
						e.resource, err = r.raw(body)
					case "search":
						v, err := r.value(nil)
						m, _ := v.(map[string]any)
						e.mode, _ = m["mode"].(string)
						return err
					default:
						err = d.SkipValue()
					}
					return err
				}); err != nil {
					return err
				}
				env.entries = append(env.entries, e)
			}
			_, err = d.ReadToken()
		default:
			err = d.SkipValue()
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := r.end(); err != nil {
		return nil, err
	}
	return env, nil
}

// members reads the object that comes next, calling f for each member
// with the reader at its value; f reads (or skips) the value.
func (r *jsonReader) members(f func(key string) error) error {
	d := &r.dec
	if _, err := d.ReadToken(); err != nil {
		return err
	}
	for d.PeekKind() != '}' {
		k, err := d.ReadToken()
		if err != nil {
			return err
		}
		if err := f(k.String()); err != nil {
			return err
		}
	}
	_, err := d.ReadToken()
	return err
}
