package batch

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// A small JSON reader for pages: decoding a thousand resources a page with
// encoding/json's reflection costs more than all the rest of preparing
// them. It decodes to the same values json.Decoder with UseNumber gives
// (map[string]any, []any, string, json.Number, bool, nil), and refuses
// what encoding/json refuses.

type jsonReader struct {
	src []byte
	pos int
	// refs, when not nil, collects every object with a string member
	// named "reference" (a Reference), to rewrite it without a walk.
	refs *[]map[string]any
}

func (p *jsonReader) errorf(format string, args ...any) error {
	return &json.SyntaxError{Offset: int64(p.pos)}
}

func (p *jsonReader) ws() {
	for p.pos < len(p.src) {
		switch p.src[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// decodeJSON decodes one JSON value that must be all of src. refs, when
// not nil, collects the objects that have a string "reference" member.
func decodeJSON(src []byte, refs *[]map[string]any) (any, error) {
	p := &jsonReader{src: src, refs: refs}
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.ws()
	if p.pos != len(src) {
		return nil, p.errorf("data after the value")
	}
	return v, nil
}

const maxDepth = 200

func (p *jsonReader) value(depth int) (any, error) {
	if depth > maxDepth {
		return nil, fmt.Errorf("JSON nested more than %d levels", maxDepth)
	}
	p.ws()
	if p.pos >= len(p.src) {
		return nil, p.errorf("unexpected end")
	}
	switch c := p.src[p.pos]; {
	case c == '{':
		p.pos++
		m := make(map[string]any, 8)
		p.ws()
		if p.pos < len(p.src) && p.src[p.pos] == '}' {
			p.pos++
			return m, nil
		}
		for {
			p.ws()
			k, err := p.str()
			if err != nil {
				return nil, err
			}
			p.ws()
			if p.pos >= len(p.src) || p.src[p.pos] != ':' {
				return nil, p.errorf("expected :")
			}
			p.pos++
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			m[k] = v
			if p.refs != nil && k == "reference" {
				if _, ok := v.(string); ok {
					*p.refs = append(*p.refs, m)
				}
			}
			p.ws()
			if p.pos < len(p.src) && p.src[p.pos] == ',' {
				p.pos++
				continue
			}
			if p.pos < len(p.src) && p.src[p.pos] == '}' {
				p.pos++
				return m, nil
			}
			return nil, p.errorf("expected , or }")
		}
	case c == '[':
		p.pos++
		a := make([]any, 0, 4)
		p.ws()
		if p.pos < len(p.src) && p.src[p.pos] == ']' {
			p.pos++
			return a, nil
		}
		for {
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			a = append(a, v)
			p.ws()
			if p.pos < len(p.src) && p.src[p.pos] == ',' {
				p.pos++
				continue
			}
			if p.pos < len(p.src) && p.src[p.pos] == ']' {
				p.pos++
				return a, nil
			}
			return nil, p.errorf("expected , or ]")
		}
	case c == '"':
		return p.str()
	case c == 't':
		return true, p.lit("true")
	case c == 'f':
		return false, p.lit("false")
	case c == 'n':
		return nil, p.lit("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	}
	return nil, p.errorf("unexpected character")
}

func (p *jsonReader) lit(s string) error {
	if len(p.src)-p.pos < len(s) || string(p.src[p.pos:p.pos+len(s)]) != s {
		return p.errorf("invalid literal")
	}
	p.pos += len(s)
	return nil
}

// number reads a number as json.Number, checking the JSON grammar.
func (p *jsonReader) number() (json.Number, error) {
	start := p.pos
	digits := func() int {
		n := 0
		for p.pos < len(p.src) && p.src[p.pos] >= '0' && p.src[p.pos] <= '9' {
			p.pos++
			n++
		}
		return n
	}
	if p.src[p.pos] == '-' {
		p.pos++
	}
	if p.pos < len(p.src) && p.src[p.pos] == '0' {
		p.pos++
	} else if digits() == 0 {
		return "", p.errorf("invalid number")
	}
	if p.pos < len(p.src) && p.src[p.pos] == '.' {
		p.pos++
		if digits() == 0 {
			return "", p.errorf("invalid number")
		}
	}
	if p.pos < len(p.src) && (p.src[p.pos] == 'e' || p.src[p.pos] == 'E') {
		p.pos++
		if p.pos < len(p.src) && (p.src[p.pos] == '+' || p.src[p.pos] == '-') {
			p.pos++
		}
		if digits() == 0 {
			return "", p.errorf("invalid number")
		}
	}
	return json.Number(p.src[start:p.pos]), nil
}

// str reads a string, unescaping it.
func (p *jsonReader) str() (string, error) {
	raw, err := p.rawString()
	if err != nil {
		return "", err
	}
	return unquote(raw)
}

// rawString returns the bytes of the string at pos, quotes included,
// refusing control characters.
func (p *jsonReader) rawString() ([]byte, error) {
	if p.pos >= len(p.src) || p.src[p.pos] != '"' {
		return nil, p.errorf("expected a string")
	}
	start := p.pos
	p.pos++
	for p.pos < len(p.src) {
		switch c := p.src[p.pos]; {
		case c == '"':
			p.pos++
			return p.src[start:p.pos], nil
		case c == '\\':
			p.pos += 2
		case c < 0x20:
			return nil, p.errorf("control character in a string")
		default:
			p.pos++
		}
	}
	return nil, p.errorf("unterminated string")
}

// skip passes over one value without decoding it, checking its syntax.
func (p *jsonReader) skip(depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("JSON nested more than %d levels", maxDepth)
	}
	p.ws()
	if p.pos >= len(p.src) {
		return p.errorf("unexpected end")
	}
	switch c := p.src[p.pos]; {
	case c == '{', c == '[':
		open, close := c, byte('}')
		if open == '[' {
			close = ']'
		}
		p.pos++
		p.ws()
		if p.pos < len(p.src) && p.src[p.pos] == close {
			p.pos++
			return nil
		}
		for {
			if open == '{' {
				p.ws()
				if _, err := p.rawString(); err != nil {
					return err
				}
				p.ws()
				if p.pos >= len(p.src) || p.src[p.pos] != ':' {
					return p.errorf("expected :")
				}
				p.pos++
			}
			if err := p.skip(depth + 1); err != nil {
				return err
			}
			p.ws()
			if p.pos < len(p.src) && p.src[p.pos] == ',' {
				p.pos++
				continue
			}
			if p.pos < len(p.src) && p.src[p.pos] == close {
				p.pos++
				return nil
			}
			return p.errorf("expected , or a closing bracket")
		}
	case c == '"':
		_, err := p.rawString()
		return err
	case c == 't':
		return p.lit("true")
	case c == 'f':
		return p.lit("false")
	case c == 'n':
		return p.lit("null")
	case c == '-' || (c >= '0' && c <= '9'):
		_, err := p.number()
		return err
	}
	return p.errorf("unexpected character")
}

// members calls f for each member of the object at pos; f reads (or
// skips) the value.
func (p *jsonReader) members(depth int, f func(key string) error) error {
	p.ws()
	if p.pos >= len(p.src) {
		return p.errorf("unexpected end")
	}
	if p.src[p.pos] != '{' {
		if err := p.skip(depth); err != nil {
			return err
		}
		return errNotObject
	}
	p.pos++
	p.ws()
	if p.pos < len(p.src) && p.src[p.pos] == '}' {
		p.pos++
		return nil
	}
	for {
		p.ws()
		k, err := p.str()
		if err != nil {
			return err
		}
		p.ws()
		if p.pos >= len(p.src) || p.src[p.pos] != ':' {
			return p.errorf("expected :")
		}
		p.pos++
		p.ws()
		if err := f(k); err != nil {
			return err
		}
		p.ws()
		if p.pos < len(p.src) && p.src[p.pos] == ',' {
			p.pos++
			continue
		}
		if p.pos < len(p.src) && p.src[p.pos] == '}' {
			p.pos++
			return nil
		}
		return p.errorf("expected , or }")
	}
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
// resourceType and issues of whatever else it is.
func readEnvelope(body []byte) (*envelope, error) {
	p := &jsonReader{src: body}
	env := &envelope{}
	str := func(dst *string) error {
		v, err := p.value(1)
		if err != nil {
			return err
		}
		*dst, _ = v.(string)
		return nil
	}
	err := p.members(0, func(key string) error {
		switch key {
		case "resourceType":
			return str(&env.resourceType)
		case "type":
			return str(&env.typ)
		case "link", "issue":
			v, err := p.value(1)
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
			return nil
		case "entry":
			p.ws()
			if p.pos >= len(p.src) || p.src[p.pos] != '[' {
				return p.skip(1) // not an array: no entries
			}
			p.pos++
			p.ws()
			if p.pos < len(p.src) && p.src[p.pos] == ']' {
				p.pos++
				return nil
			}
			for {
				var e envEntry
				p.ws()
				if p.pos < len(p.src) && p.src[p.pos] != '{' {
					if err := p.skip(2); err != nil {
						return err
					}
				} else if err := p.members(2, func(k string) error {
					switch k {
					case "fullUrl":
						return str(&e.fullURL)
					case "resource":
						start := p.pos
						if err := p.skip(3); err != nil {
							return err
						}
						e.resource = body[start:p.pos]
						return nil
					case "search":
						v, err := p.value(3)
						if err != nil {
							return err
						}
						m, _ := v.(map[string]any)
						e.mode, _ = m["mode"].(string)
						return nil
					}
					return p.skip(3)
				}); err != nil {
					return err
				}
				env.entries = append(env.entries, e)
				p.ws()
				if p.pos < len(p.src) && p.src[p.pos] == ',' {
					p.pos++
					continue
				}
				if p.pos < len(p.src) && p.src[p.pos] == ']' {
					p.pos++
					return nil
				}
				return p.errorf("expected , or ]")
			}
		}
		return p.skip(1)
	})
	if err != nil {
		return nil, err
	}
	p.ws()
	if p.pos != len(body) {
		return nil, p.errorf("data after the value")
	}
	if !utf8.Valid(body) {
		// encoding/json would replace invalid bytes; refusing is clearer.
		return nil, fmt.Errorf("the page is not valid UTF-8")
	}
	return env, nil
}
