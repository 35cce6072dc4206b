// Package fhirjson holds the small pieces of JSON handling that keep a
// resource's bytes as they were written: its top-level members in order,
// each value untouched.
package fhirjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// Member is one top-level member of a JSON object, its value kept raw.
type Member struct {
	Key string
	Raw json.RawMessage
}

// Members splits a JSON object into its top-level members, in order. The
// values share data's memory. Invalid JSON is an error.
//
// It runs in every resource write (the store stamps meta into each new
// version inside the write transaction), so it checks the document once
// with json.Valid and then splits it by hand instead of decoding it.
func Members(data []byte) ([]Member, error) {
	if !json.Valid(data) {
		return nil, errors.New("not valid JSON")
	}
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return nil, errors.New("not a JSON object")
	}
	out := make([]Member, 0, 16)
	i = skipSpace(data, i+1)
	if data[i] == '}' {
		return out, nil
	}
	for {
		// data is valid JSON: a key string, a colon, a value, then a comma
		// or the closing brace.
		end := stringEnd(data, i)
		key := data[i:end]
		var k string
		if bytes.IndexByte(key, '\\') >= 0 || !utf8.Valid(key) {
			// Escapes and invalid UTF-8 (which the decoder replaces with
			// U+FFFD) are the decoder's business.
			if err := json.Unmarshal(key, &k); err != nil {
				return nil, err
			}
		} else {
			k = string(key[1 : len(key)-1])
		}
		i = skipSpace(data, skipSpace(data, end)+1) // past the colon
		vend := valueEnd(data, i)
		out = append(out, Member{Key: k, Raw: data[i:vend:vend]})
		i = skipSpace(data, vend)
		if data[i] == '}' {
			return out, nil
		}
		i = skipSpace(data, i+1) // past the comma
	}
}

func skipSpace(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\r', '\n':
			i++
		default:
			return i
		}
	}
	return i
}

// stringEnd returns the index just past the string starting at data[i].
func stringEnd(data []byte, i int) int {
	for j := i + 1; j < len(data); j++ {
		switch data[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(data)
}

// valueEnd returns the index just past the value starting at data[i].
func valueEnd(data []byte, i int) int {
	switch data[i] {
	case '"':
		return stringEnd(data, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(data); j++ {
			switch data[j] {
			case '"':
				j = stringEnd(data, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(data)
	default: // number, true, false, null
		j := i
		for j < len(data) {
			switch data[j] {
			case ',', '}', ']', ' ', '\t', '\r', '\n':
				return j
			}
			j++
		}
		return j
	}
}

// Object writes members back as one compact JSON object. Each Raw must be
// a valid JSON value, as Members and json.Marshal give them: one without
// whitespace is copied as it is, not checked again.
func Object(ms []Member) ([]byte, error) {
	n := 2
	for _, m := range ms {
		n += len(m.Key) + len(m.Raw) + 4
	}
	b := bytes.NewBuffer(make([]byte, 0, n))
	b.WriteByte('{')
	for i, m := range ms {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.Key)
		b.Write(k)
		b.WriteByte(':')
		if IsCompact(m.Raw) {
			b.Write(m.Raw)

			continue
		}
		if err := json.Compact(b, m.Raw); err != nil {
			return nil, err
		}
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// IsCompact reports whether data, a valid JSON value, has no whitespace
// outside its strings, i.e. json.Compact would leave it as it is. It is one
// pass over the bytes, far cheaper than Compact's validation.
func IsCompact(data []byte) bool {
	in := false
	for i := 0; i < len(data); i++ {
		c := data[i]
		if in {
			switch c {
			case '\\':
				i++
			case '"':
				in = false
			}
			continue
		}
		switch c {
		case '"':
			in = true
		case ' ', '\t', '\r', '\n':
			return false
		}
	}
	return true
}
