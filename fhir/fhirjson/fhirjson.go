// Package fhirjson holds the small pieces of JSON handling that keep a
// resource's bytes as they were written: its top-level members in order,
// each value untouched.
package fhirjson

import (
	"bytes"
	"encoding/json"
	"errors"
)

// Member is one top-level member of a JSON object, its value kept raw.
type Member struct {
	Key string
	Raw json.RawMessage
}

// Members splits a JSON object into its top-level members, in order.
func Members(data []byte) ([]Member, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	t, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := t.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	var out []Member
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		k, _ := t.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, err
		}
		out = append(out, Member{k, raw})
	}
	return out, nil
}

// Object writes members back as one compact JSON object.
func Object(ms []Member) ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range ms {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.Key)
		b.Write(k)
		b.WriteByte(':')
		if err := json.Compact(&b, m.Raw); err != nil {
			return nil, err
		}
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}
