package fhirpath

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// tokenKind classifies a lexical token.
type tokenKind uint8

const (
	tokEOF    tokenKind = iota
	tokIdent            // name, `delimited name`
	tokString           // 'text'
	tokNumber           // 12, 1.5
	tokVar              // %resource
	tokThis             // $this
	tokSymbol           // . | ( ) [ ] , = != and every other operator
)

type token struct {
	kind tokenKind
	text string // identifier or symbol text, unescaped string, number
	pos  int    // byte offset in the expression, for errors
}

// lex splits expr into tokens. Operators the evaluator does not support
// are still tokenized, so the parser can name them in its error.
func lex(expr string) ([]token, error) {
	var toks []token
	i := 0
	for i < len(expr) {
		c := expr[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '/' && i+1 < len(expr) && (expr[i+1] == '/' || expr[i+1] == '*'):
			return nil, fmt.Errorf("position %d: comments are not supported", i)
		case isIdentStart(c):
			j := i + 1
			for j < len(expr) && isIdentPart(expr[j]) {
				j++
			}
			toks = append(toks, token{tokIdent, expr[i:j], i})
			i = j
		case c == '`':
			j := strings.IndexByte(expr[i+1:], '`')
			if j < 0 {
				return nil, fmt.Errorf("position %d: unterminated `identifier`", i)
			}
			if j == 0 {
				return nil, fmt.Errorf("position %d: empty `identifier`", i)
			}
			toks = append(toks, token{tokIdent, expr[i+1 : i+1+j], i})
			i += j + 2
		case c == '\'':
			s, n, err := lexString(expr[i:])
			if err != nil {
				return nil, fmt.Errorf("position %d: %w", i, err)
			}
			toks = append(toks, token{tokString, s, i})
			i += n
		case c >= '0' && c <= '9':
			j := i
			for j < len(expr) && expr[j] >= '0' && expr[j] <= '9' {
				j++
			}
			if j+1 < len(expr) && expr[j] == '.' && expr[j+1] >= '0' && expr[j+1] <= '9' {
				j++
				for j < len(expr) && expr[j] >= '0' && expr[j] <= '9' {
					j++
				}
			}
			toks = append(toks, token{tokNumber, expr[i:j], i})
			i = j
		case c == '%':
			j := i + 1
			for j < len(expr) && isIdentPart(expr[j]) {
				j++
			}
			if j == i+1 {
				return nil, fmt.Errorf("position %d: %% without a variable name", i)
			}
			toks = append(toks, token{tokVar, expr[i+1 : j], i})
			i = j
		case c == '$':
			j := i + 1
			for j < len(expr) && isIdentPart(expr[j]) {
				j++
			}
			if expr[i:j] != "$this" {
				return nil, fmt.Errorf("position %d: %s is not supported", i, expr[i:j])
			}
			toks = append(toks, token{tokThis, "$this", i})
			i = j
		default:
			sym := ""
			for _, s := range []string{"!=", "!~", "<=", ">=", ".", "|", "(", ")", "[", "]", ",", "=", "~", "<", ">", "+", "-", "*", "/", "&", "{", "}"} {
				if strings.HasPrefix(expr[i:], s) {
					sym = s
					break
				}
			}
			if sym == "" {
				r, _ := utf8.DecodeRuneInString(expr[i:])
				return nil, fmt.Errorf("position %d: unexpected character %q", i, r)
			}
			toks = append(toks, token{tokSymbol, sym, i})
			i += len(sym)
		}
	}
	return append(toks, token{tokEOF, "", len(expr)}), nil
}

func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
}

func isIdentPart(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }

// lexString reads a 'quoted' string at the start of s and returns its
// value and length.
func lexString(s string) (string, int, error) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; c {
		case '\'':
			return b.String(), i + 1, nil
		case '\\':
			if i+1 >= len(s) {
				return "", 0, fmt.Errorf("unterminated string")
			}
			i++
			switch e := s[i]; e {
			case '\'', '"', '`', '\\', '/':
				b.WriteByte(e)
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case 'f':
				b.WriteByte('\f')
			default:
				return "", 0, fmt.Errorf("escape \\%c is not supported", e)
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, fmt.Errorf("unterminated string")
}
