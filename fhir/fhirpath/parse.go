package fhirpath

import (
	"fmt"
	"strconv"
	"strings"
)

// maxDepth bounds the nesting of an expression, so a hostile one cannot
// exhaust the stack.
const maxDepth = 64

type parser struct {
	toks  []token
	i     int
	depth int
}

func (p *parser) peek() token { return p.toks[p.i] }

func (p *parser) next() token {
	t := p.toks[p.i]
	if t.kind != tokEOF {
		p.i++
	}
	return t
}

// isWord reports whether the next token is the keyword or symbol s.
func (p *parser) isWord(s string) bool {
	t := p.peek()
	return (t.kind == tokSymbol || t.kind == tokIdent) && t.text == s
}

func (p *parser) expect(sym string) error {
	t := p.next()
	if t.kind != tokSymbol || t.text != sym {
		return p.errorf(t, "expected %q", sym)
	}
	return nil
}

func (p *parser) errorf(t token, format string, args ...any) error {
	at := t.text
	if t.kind == tokEOF {
		at = "end of expression"
	}
	return fmt.Errorf("position %d (%s): %s", t.pos, at, fmt.Sprintf(format, args...))
}

// unsupported names the operators of FHIRPath this subset leaves out.
var unsupported = map[string]bool{
	"xor": true, "implies": true, "in": true, "contains": true, "div": true, "mod": true,
	"~": true, "!~": true, "<": true, ">": true, "<=": true, ">=": true,
	"+": true, "-": true, "*": true, "/": true, "&": true, "{": true, "}": true,
}

func (p *parser) parseExpr() (node, error) {
	p.depth++
	defer func() { p.depth-- }()
	if p.depth > maxDepth {
		return nil, p.errorf(p.peek(), "expression nested too deeply")
	}
	return p.parseOr()
}

func (p *parser) parseOr() (node, error) {
	l, err := p.parseAnd()
	if err != nil {
		return nil, err
	}
	for p.isWord("or") {
		p.next()
		r, err := p.parseAnd()
		if err != nil {
			return nil, err
		}
		l = &logicNode{l: l, r: r, or: true}
	}
	return l, nil
}

func (p *parser) parseAnd() (node, error) {
	l, err := p.parseEquality()
	if err != nil {
		return nil, err
	}
	for p.isWord("and") {
		p.next()
		r, err := p.parseEquality()
		if err != nil {
			return nil, err
		}
		l = &logicNode{l: l, r: r}
	}
	return l, nil
}

func (p *parser) parseEquality() (node, error) {
	l, err := p.parseUnion()
	if err != nil {
		return nil, err
	}
	for p.isWord("=") || p.isWord("!=") {
		neg := p.next().text == "!="
		r, err := p.parseUnion()
		if err != nil {
			return nil, err
		}
		l = &equalNode{l: l, r: r, neg: neg}
	}
	return l, nil
}

func (p *parser) parseUnion() (node, error) {
	l, err := p.parseType()
	if err != nil {
		return nil, err
	}
	for p.isWord("|") {
		p.next()
		r, err := p.parseType()
		if err != nil {
			return nil, err
		}
		l = &unionNode{l: l, r: r}
	}
	return l, nil
}

func (p *parser) parseType() (node, error) {
	l, err := p.parsePostfix()
	if err != nil {
		return nil, err
	}
	for p.isWord("is") || p.isWord("as") {
		op := p.next().text
		typ, err := p.parseTypeSpecifier()
		if err != nil {
			return nil, err
		}
		l = &typeNode{in: l, typ: typ, filter: op == "as"}
	}
	if t := p.peek(); unsupported[t.text] && (t.kind == tokSymbol || t.kind == tokIdent) {
		return nil, p.errorf(t, "operator %s is not supported", t.text)
	}
	return l, nil
}

// parseTypeSpecifier reads a type name, optionally qualified (FHIR.Patient,
// System.String).
func (p *parser) parseTypeSpecifier() (typeName, error) {
	t := p.next()
	if t.kind != tokIdent {
		return typeName{}, p.errorf(t, "expected a type name")
	}
	name := t.text
	if p.isWord(".") && p.toks[p.i+1].kind == tokIdent && (name == "FHIR" || name == "System") {
		p.next()
		name += "." + p.next().text
	}
	return parseTypeName(name), nil
}

func (p *parser) parsePostfix() (node, error) {
	n, err := p.parseTerm()
	if err != nil {
		return nil, err
	}
	for {
		switch {
		case p.isWord("."):
			p.next()
			t := p.next()
			if t.kind != tokIdent {
				return nil, p.errorf(t, "expected a name after '.'")
			}
			if p.isWord("(") {
				n, err = p.parseFunction(n, t)
			} else {
				n = &memberNode{in: n, name: t.text}
			}
			if err != nil {
				return nil, err
			}
		case p.isWord("["):
			p.next()
			t := p.next()
			idx, convErr := strconv.Atoi(t.text)
			if t.kind != tokNumber || convErr != nil {
				return nil, p.errorf(t, "only a literal integer index is supported")
			}
			if err := p.expect("]"); err != nil {
				return nil, err
			}
			n = &indexNode{in: n, i: idx}
		default:
			return n, nil
		}
	}
}

func (p *parser) parseTerm() (node, error) {
	t := p.next()
	switch t.kind {
	case tokIdent:
		switch t.text {
		case "true", "false":
			return &literalNode{Node{Value: t.text == "true", Type: "boolean"}}, nil
		}
		if p.isWord("(") {
			return p.parseFunction(nil, t)
		}
		return &memberNode{name: t.text}, nil
	case tokString:
		return &literalNode{Node{Value: t.text, Type: "string"}}, nil
	case tokNumber:
		typ := "integer"
		if strings.Contains(t.text, ".") {
			typ = "decimal"
		}
		return &literalNode{Node{Value: jsonNumber(t.text), Type: typ}}, nil
	case tokThis:
		return thisNode{}, nil
	case tokVar:
		switch t.text {
		case "resource", "rootResource", "context":
			return resourceNode{}, nil
		}
		return nil, p.errorf(t, "variable %%%s is not supported", t.text)
	case tokSymbol:
		if t.text == "(" {
			n, err := p.parseExpr()
			if err != nil {
				return nil, err
			}
			return n, p.expect(")")
		}
		if unsupported[t.text] {
			return nil, p.errorf(t, "operator %s is not supported", t.text)
		}
	}
	return nil, p.errorf(t, "expected a name, a literal or '('")
}

// functions lists the supported functions and how many arguments each
// takes (min, max).
var functions = map[string][2]int{
	"where":     {1, 1},
	"exists":    {0, 1},
	"empty":     {0, 0},
	"not":       {0, 0},
	"first":     {0, 0},
	"resolve":   {0, 0},
	"ofType":    {1, 1},
	"as":        {1, 1},
	"is":        {1, 1},
	"extension": {1, 1},
}

func (p *parser) parseFunction(in node, name token) (node, error) {
	arity, ok := functions[name.text]
	if !ok {
		return nil, p.errorf(name, "function %s() is not supported", name.text)
	}
	if err := p.expect("("); err != nil {
		return nil, err
	}
	f := &funcNode{in: in, name: name.text}
	for !p.isWord(")") {
		if len(f.args) > 0 {
			if err := p.expect(","); err != nil {
				return nil, err
			}
		}
		switch name.text {
		case "ofType", "as", "is":
			typ, err := p.parseTypeSpecifier()
			if err != nil {
				return nil, err
			}
			f.typ = typ
			f.args = append(f.args, nil)
		case "extension":
			t := p.next()
			if t.kind != tokString {
				return nil, p.errorf(t, "extension() takes a literal URL")
			}
			f.url = t.text
			f.args = append(f.args, nil)
		default:
			arg, err := p.parseExpr()
			if err != nil {
				return nil, err
			}
			f.args = append(f.args, arg)
		}
	}
	p.next()
	if len(f.args) < arity[0] || len(f.args) > arity[1] {
		return nil, p.errorf(name, "%s() takes %d to %d arguments, not %d", name.text, arity[0], arity[1], len(f.args))
	}
	return f, nil
}
