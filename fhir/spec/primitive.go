package spec

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
)

// jsonKind is the JSON kind a primitive's value must have.
type jsonKind uint8

const (
	kindString jsonKind = iota
	kindNumber
	kindBool
)

// primitive is a compiled primitive type: the JSON kind of its values and
// the pattern their text must match.
type primitive struct {
	name    string
	kind    jsonKind
	pattern string              // as the schema writes it
	match   func(s string) bool // nil: any text
	integer bool                // a 32-bit integer (integer, positiveInt, unsignedInt)
	re      *regexp.Regexp      // the compiled pattern, kept for tests of the fast matchers
}

// newPrimitive compiles a primitive. Patterns are compiled once and shared
// through regexps.
//
// The schema's patterns are written for JSON Schema, where `^a|b$` means
// "starts with a, or ends with b"; two of them (boolean `^true|false$` and
// unsignedInt `^[0]|([1-9][0-9]*)$`) lean on that by accident and would
// accept "-5" as an unsignedInt. Every pattern is therefore matched against
// the whole value, as the specification intends.
func newPrimitive(name, jsonType, pattern string, regexps map[string]*regexp.Regexp) (*primitive, error) {
	p := &primitive{name: name, pattern: pattern}
	switch jsonType {
	case "string", "":
		// xhtml has no type in the schema; in JSON it is a string.
		p.kind = kindString
	case "number":
		p.kind = kindNumber
	case "boolean":
		p.kind = kindBool
	default:
		return nil, fmt.Errorf("primitive %s: JSON type %q", name, jsonType)
	}
	switch name {
	case "integer", "positiveInt", "unsignedInt":
		p.integer = true
	}
	if pattern == "" || p.kind == kindBool {
		return p, nil
	}
	re := regexps[pattern]
	if re == nil {
		inner := strings.TrimSuffix(strings.TrimPrefix(pattern, "^"), "$")
		var err error
		re, err = regexp.Compile("^(?:" + inner + ")$")
		if err != nil {
			return nil, fmt.Errorf("primitive %s: pattern: %w", name, err)
		}
		regexps[pattern] = re
	}
	p.re = re
	p.match = fastMatcher(pattern)
	if p.match == nil {
		p.match = re.MatchString
	}
	return p, nil
}

// article returns "a" or "an" for a type name, for messages.
func article(name string) string {
	switch name[0] {
	case 'a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U':
		return "an"
	}
	return "a"
}

// checkNumber checks the text of a JSON number against p and, for integer
// types, the 32-bit range FHIR gives them. It returns a message or "".
func (p *primitive) checkNumber(text string) string {
	if p.match != nil && !p.match(text) {
		return fmt.Sprintf("%s is not a valid %s", text, p.name)
	}
	if p.integer {
		if n, err := strconv.ParseInt(text, 10, 64); err != nil || n > math.MaxInt32 || n < math.MinInt32 {
			return fmt.Sprintf("%s is out of the range of a 32-bit %s", text, p.name)
		}
	}
	return ""
}
