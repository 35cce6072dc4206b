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

// EditObject rewrites the members of the JSON object data, one level
// deep. edit is called with each member's name and value (raw, sharing
// data's memory) and returns the value to write: value itself to keep
// the member as it is, another valid JSON value to replace it, or nil to
// leave the member out. Every member kept is data's bytes as written
// (name, colon, value: member order, number text and string escapes
// stay); only the commas between members are written anew. When nothing
// changes data itself is returned. Invalid JSON, or anything but one
// object, is an error.
func EditObject(data []byte, edit func(name string, value []byte) ([]byte, error)) ([]byte, error) {
	return editComposite(data, '{', func(name string, _ int, value []byte) ([]byte, error) {
		return edit(name, value)
	})
}

// EditArray rewrites the elements of the JSON array data as EditObject
// does the members of an object: edit is called with each element's
// index and raw value and returns it, its replacement, or nil to leave
// it out. When nothing changes data itself is returned. Invalid JSON, or
// anything but one array, is an error.
func EditArray(data []byte, edit func(i int, value []byte) ([]byte, error)) ([]byte, error) {
	return editComposite(data, '[', func(_ string, i int, value []byte) ([]byte, error) {
		return edit(i, value)
	})
}

// editComposite walks the object or array (kind '{' or '[') data and
// splices what edit returns for each of its members or elements.
func editComposite(data []byte, kind jsontext.Kind, edit func(name string, i int, value []byte) ([]byte, error)) ([]byte, error) {
	d := jsontext.NewDecoder(bytes.NewReader(data), lenient...)
	if d.PeekKind() != kind {
		if _, err := d.ReadToken(); err != nil && err != io.EOF {
			return nil, err
		}
		if kind == '{' {
			return nil, errors.New("not a JSON object")
		}
		return nil, errors.New("not a JSON array")
	}
	if _, err := d.ReadToken(); err != nil {
		return nil, err
	}
	end := kind + 2 // '}' or ']'
	out := make([]byte, 0, len(data))
	out = append(out, byte(kind))
	changed, n := false, 0
	for i := 0; d.PeekKind() != end; i++ {
		start := int(d.InputOffset())
		var name string
		if kind == '{' {
			k, err := d.ReadToken()
			if err != nil {
				return nil, err
			}
			name = k.String()
			// The name's opening quote follows the separator and any space.
			start += bytes.IndexByte(data[start:], '"')
		}
		v, err := d.ReadValue()
		if err != nil {
			return nil, err
		}
		vEnd := int(d.InputOffset())
		vStart := vEnd - len(v)
		if kind == '[' {
			start = vStart
		}
		value := data[vStart:vEnd:vEnd]
		nv, err := edit(name, i, value)
		if err != nil {
			return nil, err
		}
		if nv == nil {
			changed = true
			continue
		}
		if !bytes.Equal(nv, value) {
			changed = true
		}
		if n > 0 {
			out = append(out, ',')
		}
		out = append(out, data[start:vStart]...)
		out = append(out, nv...)
		n++
	}
	if _, err := d.ReadToken(); err != nil {
		return nil, err
	}
	if _, err := d.ReadToken(); err != io.EOF {
		return nil, errors.New("data after the JSON value")
	}
	if !changed {
		return data, nil
	}
	return append(out, byte(end)), nil
}
