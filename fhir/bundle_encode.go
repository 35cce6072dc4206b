package fhir

import (
	"bytes"
	"encoding/json"

	"github.com/p2pserver/p2pserver/fhir/fhirjson"
)

// Encode writes b as JSON, like json.Marshal, but writes each entry's
// resource as it is instead of validating and compacting it again:
// json.Marshal re-scans every json.RawMessage, which made encoding the
// largest cost of a search page. Entry resources must therefore be
// compact, valid JSON objects, as the store and this package produce them
// (stored versions, shaped _elements/_summary copies, OperationOutcomes,
// generated Provenance); a resource with insignificant whitespace is
// compacted here, unless this package marked it compact (stored versions
// and shaped copies), which is written as it is. An entry with only a
// search mode, and a fullUrl of plain characters, are written without
// encoding/json.
func (b *Bundle) Encode() ([]byte, error) {
	head := *b
	head.Entry = nil
	out, err := json.Marshal(&head)
	if err != nil || len(b.Entry) == 0 {
		return out, err
	}
	size := len(out) + 16
	for _, e := range b.Entry {
		size += len(e.FullURL) + len(e.Resource) + 96
	}
	buf := bytes.NewBuffer(make([]byte, 0, size))
	buf.Write(out[:len(out)-1]) // without the closing brace
	buf.WriteString(`,"entry":[`)
	for i, e := range b.Entry {
		if i > 0 {
			buf.WriteByte(',')
		}
		res, full := e.Resource, e.FullURL
		e.Resource, e.FullURL = nil, ""
		var rest []byte
		mode := e.Search != nil && e.Request == nil && e.Response == nil && plainJSON(e.Search.Mode)
		if !mode {
			if rest, err = json.Marshal(&e); err != nil { // search, request, response: small
				return nil, err
			}
		}
		buf.WriteByte('{')
		sep := false
		if full != "" {
			buf.WriteString(`"fullUrl":`)
			if plainJSON(full) {
				buf.WriteByte('"')
				buf.WriteString(full)
				buf.WriteByte('"')
			} else {
				q, _ := json.Marshal(full)
				buf.Write(q)
			}
			sep = true
		}
		if len(res) > 0 {
			if sep {
				buf.WriteByte(',')
			}
			buf.WriteString(`"resource":`)
			if e.compact {
				buf.Write(res)
			} else {
				b, err := fhirjson.AppendCompact(buf.AvailableBuffer(), res)
				if err != nil {
					return nil, err
				}
				buf.Write(b)
			}
			sep = true
		}
		switch {
		case mode:
			if sep {
				buf.WriteByte(',')
			}
			buf.WriteString(`"search":{"mode":"`)
			buf.WriteString(e.Search.Mode)
			buf.WriteString(`"}`)
		case len(rest) > 2: // more than {}
			if sep {
				buf.WriteByte(',')
			}
			buf.Write(rest[1 : len(rest)-1])
		}
		buf.WriteByte('}')
	}
	buf.WriteString("]}")
	return buf.Bytes(), nil
}

// plainJSON reports whether s is written in a JSON string as it is, as
// encoding/json writes it: printable ASCII without '"', '\\' or the
// characters encoding/json escapes for HTML ('<', '>', '&').
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c >= 0x7f, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}
