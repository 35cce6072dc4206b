package batch

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// refFunc maps a Reference.reference value to the value to store, and says
// whether it changed.
type refFunc func(ref string) (string, bool)

// canonical returns a resource's JSON as it is stored from a source payer:
// compact, resourceType, id and meta first and every other member in its
// order, with
//
//   - id replaced by localID;
//   - meta without versionId and lastUpdated (the store sets them) and with
//     source set to source;
//   - every string value of a member named "reference" (Reference.reference)
//     passed through refs.
//
// Its output is what the store keeps apart from meta.versionId and
// meta.lastUpdated, so equal outputs mean equal stored content. raw must be
// a JSON object (the decoder has already checked it).
func canonical(raw []byte, localID, source string, refs refFunc) ([]byte, error) {
	s := scanner{src: raw, refs: refs}
	s.ws()
	if !s.eat('{') {
		return nil, s.fail("a resource must be a JSON object")
	}
	type member struct {
		key string
		val []byte // rewritten, compact
	}
	var rt, meta []byte
	var rest []member
	s.ws()
	if !s.eat('}') {
		for {
			s.ws()
			key, err := s.key()
			if err != nil {
				return nil, err
			}
			start := len(s.out)
			if err := s.value(key); err != nil {
				return nil, err
			}
			val := s.out[start:]
			switch key {
			case "resourceType":
				rt = val
			case "id":
			case "meta":
				meta = val
			default:
				rest = append(rest, member{key, val})
			}
			s.ws()
			if s.eat(',') {
				continue
			}
			if s.eat('}') {
				break
			}
			return nil, s.fail("expected , or } in an object")
		}
	}
	if rt == nil {
		return nil, fmt.Errorf("the resource has no resourceType")
	}
	var b bytes.Buffer
	b.Grow(len(raw) + len(source) + 64)
	b.WriteString(`{"resourceType":`)
	b.Write(rt)
	b.WriteString(`,"id":`)
	writeJSONString(&b, localID)
	b.WriteString(`,"meta":{`)
	n := 0
	if meta != nil {
		ms, err := objectMembers(meta)
		if err != nil {
			return nil, fmt.Errorf("meta: %w", err)
		}
		for _, m := range ms {
			switch m.key {
			case "versionId", "lastUpdated", "source":
				continue
			}
			if n > 0 {
				b.WriteByte(',')
			}
			writeJSONString(&b, m.key)
			b.WriteByte(':')
			b.Write(m.val)
			n++
		}
	}
	if n > 0 {
		b.WriteByte(',')
	}
	b.WriteString(`"source":`)
	writeJSONString(&b, source)
	b.WriteByte('}')
	for _, m := range rest {
		b.WriteByte(',')
		writeJSONString(&b, m.key)
		b.WriteByte(':')
		b.Write(m.val)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

type rawMember struct {
	key string
	val []byte
}

// objectMembers splits a compact JSON object into its members.
func objectMembers(obj []byte) ([]rawMember, error) {
	s := scanner{src: obj}
	s.ws()
	if !s.eat('{') {
		return nil, s.fail("expected an object")
	}
	var out []rawMember
	s.ws()
	if s.eat('}') {
		return out, nil
	}
	for {
		s.ws()
		key, err := s.key()
		if err != nil {
			return nil, err
		}
		start := len(s.out)
		if err := s.value(key); err != nil {
			return nil, err
		}
		out = append(out, rawMember{key, s.out[start:]})
		s.ws()
		if s.eat(',') {
			continue
		}
		if s.eat('}') {
			return out, nil
		}
		return nil, s.fail("expected , or } in an object")
	}
}

// scanner copies JSON from src to out, compacted, rewriting references.
type scanner struct {
	src  []byte
	pos  int
	out  []byte
	refs refFunc
}

func (s *scanner) fail(msg string) error {
	return fmt.Errorf("malformed JSON at byte %d: %s", s.pos, msg)
}

func (s *scanner) ws() {
	for s.pos < len(s.src) {
		switch s.src[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

func (s *scanner) eat(c byte) bool {
	if s.pos < len(s.src) && s.src[s.pos] == c {
		s.pos++
		return true
	}
	return false
}

// key reads a member name and its colon, and writes neither.
func (s *scanner) key() (string, error) {
	raw, err := s.str()
	if err != nil {
		return "", err
	}
	k, err := unquote(raw)
	if err != nil {
		return "", err
	}
	s.ws()
	if !s.eat(':') {
		return "", s.fail("expected : after a member name")
	}
	s.ws()
	return k, nil
}

// str returns the raw bytes of the string at pos, quotes included.
func (s *scanner) str() ([]byte, error) {
	if !s.eat('"') {
		return nil, s.fail("expected a string")
	}
	start := s.pos - 1
	for s.pos < len(s.src) {
		switch s.src[s.pos] {
		case '"':
			s.pos++
			return s.src[start:s.pos], nil
		case '\\':
			s.pos += 2
		default:
			s.pos++
		}
	}
	return nil, s.fail("unterminated string")
}

// value copies one value; parentKey is the member name it belongs to.
func (s *scanner) value(parentKey string) error {
	s.ws()
	if s.pos >= len(s.src) {
		return s.fail("unexpected end")
	}
	switch c := s.src[s.pos]; {
	case c == '{':
		s.pos++
		s.out = append(s.out, '{')
		s.ws()
		if s.eat('}') {
			s.out = append(s.out, '}')
			return nil
		}
		for first := true; ; first = false {
			if !first {
				s.out = append(s.out, ',')
			}
			s.ws()
			rawKey, err := s.str()
			if err != nil {
				return err
			}
			s.out = append(s.out, rawKey...)
			s.ws()
			if !s.eat(':') {
				return s.fail("expected : after a member name")
			}
			s.out = append(s.out, ':')
			s.ws()
			key := string(rawKey[1 : len(rawKey)-1])
			if bytes.IndexByte(rawKey, '\\') >= 0 {
				if key, err = unquote(rawKey); err != nil {
					return err
				}
			}
			if err := s.value(key); err != nil {
				return err
			}
			s.ws()
			if s.eat(',') {
				continue
			}
			if s.eat('}') {
				s.out = append(s.out, '}')
				return nil
			}
			return s.fail("expected , or } in an object")
		}
	case c == '[':
		s.pos++
		s.out = append(s.out, '[')
		s.ws()
		if s.eat(']') {
			s.out = append(s.out, ']')
			return nil
		}
		for first := true; ; first = false {
			if !first {
				s.out = append(s.out, ',')
			}
			if err := s.value(parentKey); err != nil {
				return err
			}
			s.ws()
			if s.eat(',') {
				continue
			}
			if s.eat(']') {
				s.out = append(s.out, ']')
				return nil
			}
			return s.fail("expected , or ] in an array")
		}
	case c == '"':
		raw, err := s.str()
		if err != nil {
			return err
		}
		if parentKey == "reference" && s.refs != nil {
			ref, err := unquote(raw)
			if err != nil {
				return err
			}
			if to, changed := s.refs(ref); changed {
				s.out = appendJSONString(s.out, to)
				return nil
			}
		}
		if bytes.IndexByte(raw, '\\') >= 0 || !utf8.Valid(raw) {
			// One spelling per string ("<" and "\u003c" are the same
			// JSON), so that equal content gives equal bytes whichever way
			// the source encoded it.
			str, err := unquote(raw)
			if err != nil {
				return err
			}
			s.out = appendJSONString(s.out, str)
			return nil
		}
		s.out = append(s.out, raw...)
		return nil
	default:
		start := s.pos
		for s.pos < len(s.src) {
			switch s.src[s.pos] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				s.out = append(s.out, s.src[start:s.pos]...)
				return nil
			}
			s.pos++
		}
		s.out = append(s.out, s.src[start:s.pos]...)
		return nil
	}
}

func unquote(raw []byte) (string, error) {
	if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		return string(raw[1 : len(raw)-1]), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("malformed JSON string: %w", err)
	}
	return s, nil
}

// appendJSONString appends s as a JSON string in the one spelling this
// package writes: only the quote, the backslash and control characters
// escaped, everything else as UTF-8.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			dst = append(dst, '\\', c)
		case c == '\n':
			dst = append(dst, '\\', 'n')
		case c == '\r':
			dst = append(dst, '\\', 'r')
		case c == '\t':
			dst = append(dst, '\\', 't')
		case c < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '"')
}

func writeJSONString(b *bytes.Buffer, s string) {
	b.Write(appendJSONString(nil, s))
}
