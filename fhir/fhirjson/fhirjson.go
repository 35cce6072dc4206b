// Package fhirjson holds the small pieces of JSON handling that keep a
// resource's bytes as they were written: its top-level members in order,
// each value untouched.
package fhirjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"sync"

	"github.com/go-json-experiment/json/jsontext"
)

// Member is one top-level member of a JSON object, its value kept raw.
type Member struct {
	Key string
	Raw json.RawMessage
}

// lenient reads and writes what encoding/json accepts: duplicate member
// names, and invalid UTF-8 (replaced by U+FFFD where a string is
// unquoted); string escapes are kept as written.
var lenient = []jsontext.Options{
	jsontext.AllowDuplicateNames(true),
	jsontext.AllowInvalidUTF8(true),
	jsontext.PreserveRawStrings(true),
}

type reader struct {
	buf bytes.Buffer
	dec jsontext.Decoder
}

var readers = sync.Pool{New: func() any { return new(reader) }}

// Members splits a JSON object into its top-level members, in order. The
// values share data's memory. Invalid JSON, or anything but one object, is
// an error.
//
// It runs in every resource write (the store stamps meta into each new
// version inside the write transaction); jsontext checks each value once
// as it passes over it, and nothing is decoded.
func Members(data []byte) ([]Member, error) {
	r := readers.Get().(*reader)
	defer func() {
		r.buf = bytes.Buffer{}
		r.dec.Reset(&r.buf)
		readers.Put(r)
	}()
	// A bytes.Buffer is read in place, not copied.
	r.buf = *bytes.NewBuffer(data)
	d := &r.dec
	d.Reset(&r.buf, lenient...)
	if d.PeekKind() != '{' {
		if _, err := d.ReadToken(); err != nil && err != io.EOF {
			return nil, err
		}
		return nil, errors.New("not a JSON object")
	}
	if _, err := d.ReadToken(); err != nil {
		return nil, err
	}
	out := make([]Member, 0, 16)
	for d.PeekKind() != '}' {
		k, err := d.ReadToken()
		if err != nil {
			return nil, err
		}
		key := k.String()
		v, err := d.ReadValue()
		if err != nil {
			return nil, err
		}
		end := int(d.InputOffset())
		out = append(out, Member{Key: key, Raw: data[end-len(v) : end : end]})
	}
	if _, err := d.ReadToken(); err != nil {
		return nil, err
	}
	if _, err := d.ReadToken(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return out, nil
}

// Object writes members back as one compact JSON object. Each Raw must be
// a valid JSON value (as Members and json.Marshal give them); it is
// compacted with its string escapes kept, as AppendCompact does.
func Object(ms []Member) ([]byte, error) {
	n := 2
	for _, m := range ms {
		n += len(m.Key) + len(m.Raw) + 4
	}
	b := make([]byte, 1, n)
	b[0] = '{'
	var err error
	for i, m := range ms {
		if i > 0 {
			b = append(b, ',')
		}
		if b, err = jsontext.AppendQuote(b, m.Key); err != nil {
			return nil, err
		}
		b = append(b, ':')
		if b, err = AppendCompact(b, m.Raw); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

// AppendCompact appends the JSON value v to dst without the whitespace
// outside its strings, as json.Compact does: strings and numbers as
// written, duplicate names kept. Invalid JSON is an error.
func AppendCompact(dst, v []byte) ([]byte, error) {
	return jsontext.AppendFormat(dst, v, lenient...)
}
