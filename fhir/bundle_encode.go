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
// compacted here.
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
		rest, err := json.Marshal(&e) // search, request, response: small
		if err != nil {
			return nil, err
		}
		buf.WriteByte('{')
		sep := false
		if full != "" {
			q, _ := json.Marshal(full)
			buf.WriteString(`"fullUrl":`)
			buf.Write(q)
			sep = true
		}
		if len(res) > 0 {
			if sep {
				buf.WriteByte(',')
			}
			buf.WriteString(`"resource":`)
			b, err := fhirjson.AppendCompact(buf.AvailableBuffer(), res)
			if err != nil {
				return nil, err
			}
			buf.Write(b)
			sep = true
		}
		if len(rest) > 2 { // more than {}
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
