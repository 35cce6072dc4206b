package fhir

import (
	"bytes"
	"encoding/json"
	"html"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/p2pserver/p2pserver/fhir/spec"
)

// linkKind says where in a resource a link was found, which decides what
// the transaction rules replace it with.
type linkKind uint8

const (
	// linkReference is a Reference.reference.
	linkReference linkKind = iota
	// linkURI is an element of type uri, url, oid or uuid.
	linkURI
	// linkNarrative is an href or src attribute in the narrative's XHTML.
	linkNarrative
)

// linkTypes are the primitive types whose values FHIR R4 http.html#trules
// names for replacement: "Servers SHALL replace all matching links in the
// bundle, whether they are found in the resource ids, resource references,
// elements of type uri, url, oid, uuid, and <a href="" & <img src="" in the
// narrative. Elements of type canonical are not replaced."
var linkTypes = map[string]bool{"uri": true, "url": true, "oid": true, "uuid": true}

// narrativeLink finds href and src attributes in XHTML.
var narrativeLink = regexp.MustCompile(`(?i)\b(href|src)\s*=\s*("[^"]*"|'[^']*')`)

// rewriteLinks walks raw, a resource of type typ, with the R4 type model and
// asks fn about every link the transaction rules name: references, values
// of type uri, url, oid and uuid (never canonical), and href/src in the
// narrative, in contained resources too. When fn answers true the value is
// replaced. The rest of the JSON is kept byte for byte. raw must be valid
// JSON (the Bundle was validated before).
func rewriteLinks(m *spec.Model, raw []byte, typ string, fn func(kind linkKind, v string) (string, bool)) ([]byte, bool) {
	w := &linkWalker{m: m, data: raw, fn: fn}
	w.object(skipWS(raw, 0), typ)
	if len(w.edits) == 0 {
		return raw, false
	}
	out := make([]byte, 0, len(raw)+64)
	last := 0
	for _, e := range w.edits {
		out = append(out, raw[last:e.start]...)
		out = append(out, e.text...)
		last = e.end
	}
	return append(out, raw[last:]...), true
}

type linkEdit struct {
	start, end int
	text       []byte
}

type linkWalker struct {
	m     *spec.Model
	data  []byte
	fn    func(linkKind, string) (string, bool)
	edits []linkEdit
}

// object walks the object at data[i] as FHIR type typ ("Resource" for a
// resource whose type its resourceType says) and returns the index past it.
func (w *linkWalker) object(i int, typ string) int {
	d := w.data
	if i >= len(d) || d[i] != '{' {
		return jsonValueEnd(d, i)
	}
	if typ == "Resource" {
		typ = w.resourceType(i)
	}
	i = skipWS(d, i+1)
	for i < len(d) && d[i] != '}' {
		kend := jsonStringEnd(d, i)
		key := jsonString(d[i:kend])
		i = skipWS(d, skipWS(d, kend)+1) // past the colon
		var end int
		if el, ok := w.m.Element(typ, key); ok && typ != "" {
			end = w.value(i, el.Type, typ, key)
		} else {
			end = jsonValueEnd(d, i)
		}
		i = skipWS(d, end)
		if i < len(d) && d[i] == ',' {
			i = skipWS(d, i+1)
		}
	}
	return i + 1
}

// resourceType finds the resourceType member of the object at data[i].
func (w *linkWalker) resourceType(i int) string {
	d := w.data
	i = skipWS(d, i+1)
	for i < len(d) && d[i] != '}' {
		kend := jsonStringEnd(d, i)
		key := jsonString(d[i:kend])
		i = skipWS(d, skipWS(d, kend)+1)
		end := jsonValueEnd(d, i)
		if key == "resourceType" && d[i] == '"' {
			if rt := jsonString(d[i:end]); w.m.IsResource(rt) {
				return rt
			}
			return ""
		}
		i = skipWS(d, end)
		if i < len(d) && d[i] == ',' {
			i = skipWS(d, i+1)
		}
	}
	return ""
}

// value walks the value at data[i] of element key (of type elType) of an
// object of type owner.
func (w *linkWalker) value(i int, elType, owner, key string) int {
	d := w.data
	switch d[i] {
	case '[':
		i = skipWS(d, i+1)
		for i < len(d) && d[i] != ']' {
			i = skipWS(d, w.value(i, elType, owner, key))
			if i < len(d) && d[i] == ',' {
				i = skipWS(d, i+1)
			}
		}
		return i + 1
	case '{':
		return w.object(i, elType)
	case '"':
		end := jsonStringEnd(d, i)
		var kind linkKind
		switch {
		case owner == "Reference" && key == "reference":
			kind = linkReference
		case linkTypes[elType]:
			kind = linkURI
		case elType == "xhtml":
			w.narrative(i, end)
			return end
		default:
			return end
		}
		if to, ok := w.fn(kind, jsonString(d[i:end])); ok {
			w.edits = append(w.edits, linkEdit{i, end, jsonQuote(to)})
		}
		return end
	}
	return jsonValueEnd(d, i)
}

// narrative replaces the href and src attributes fn asks to in the XHTML
// string literal data[start:end].
func (w *linkWalker) narrative(start, end int) {
	if out, changed := rewriteNarrative(jsonString(w.data[start:end]), w.fn); changed {
		w.edits = append(w.edits, linkEdit{start, end, jsonQuote(out)})
	}
}

// rewriteNarrative replaces the href and src attributes fn asks to in the
// XHTML div, and reports whether it changed any.
func rewriteNarrative(div string, fn func(linkKind, string) (string, bool)) (string, bool) {
	if !strings.Contains(div, "href") && !strings.Contains(div, "src") &&
		!strings.Contains(div, "HREF") && !strings.Contains(div, "SRC") {
		return div, false
	}
	changed := false
	out := narrativeLink.ReplaceAllStringFunc(div, func(attr string) string {
		sm := narrativeLink.FindStringSubmatch(attr)
		quoted := sm[2]
		q := quoted[:1]
		v := html.UnescapeString(quoted[1 : len(quoted)-1])
		to, ok := fn(linkNarrative, v)
		if !ok {
			return attr
		}
		changed = true
		return attr[:len(attr)-len(quoted)] + q + html.EscapeString(to) + q
	})
	return out, changed
}

// linkChange is a link rewriteLinks replaced: the value it had, of a kind.
type linkChange struct {
	kind linkKind
	from string
}

// linkChanges are the links rewriteLinksRecorded replaced, and what with.
type linkChanges map[linkChange]string

// rewriteLinksRecorded is rewriteLinks, which also returns the links it
// replaced and what with (nil when none), for rewriteDecodedLinks to
// replace in the resource as decoded.
func rewriteLinksRecorded(m *spec.Model, raw []byte, typ string, fn func(kind linkKind, v string) (string, bool)) ([]byte, linkChanges) {
	var changes linkChanges
	out, _ := rewriteLinks(m, raw, typ, func(kind linkKind, v string) (string, bool) {
		to, ok := fn(kind, v)
		if ok {
			if changes == nil {
				changes = linkChanges{}
			}
			changes[linkChange{kind, v}] = to
		}
		return to, ok
	})
	return out, changes
}

// lookup answers what rewriteLinksRecorded replaced v of kind with.
func (c linkChanges) lookup(kind linkKind, v string) (string, bool) {
	to, ok := c[linkChange{kind, v}]
	return to, ok
}

// rewriteDecodedLinks replaces, in res (a resource of type typ as
// decodeJSON gives it), the links rewriteLinks replaces in its JSON with
// the same fn: it walks the same elements with the same type model, so
// that res stays the decoding of the rewritten JSON without decoding it
// again. res is changed in place.
func rewriteDecodedLinks(m *spec.Model, res map[string]any, typ string, fn func(kind linkKind, v string) (string, bool)) {
	w := &decodedLinkWalker{m: m, fn: fn}
	w.object(res, typ)
}

type decodedLinkWalker struct {
	m  *spec.Model
	fn func(linkKind, string) (string, bool)
}

// object walks obj as FHIR type typ (see linkWalker.object).
func (w *decodedLinkWalker) object(obj map[string]any, typ string) {
	if typ == "Resource" {
		typ, _ = obj["resourceType"].(string)
		if !w.m.IsResource(typ) {
			typ = ""
		}
	}
	if typ == "" {
		return
	}
	for key, v := range obj {
		el, ok := w.m.Element(typ, key)
		if !ok {
			continue
		}
		if s, ok := v.(string); ok {
			if to, ok := w.str(s, el.Type, typ, key); ok {
				obj[key] = to
			}
			continue
		}
		w.value(v, el.Type, typ, key)
	}
}

// value walks a non-string value v of element key (of type elType) of an
// object of type owner (see linkWalker.value).
func (w *decodedLinkWalker) value(v any, elType, owner, key string) {
	switch x := v.(type) {
	case []any:
		for i, c := range x {
			if s, ok := c.(string); ok {
				if to, ok := w.str(s, elType, owner, key); ok {
					x[i] = to
				}
				continue
			}
			w.value(c, elType, owner, key)
		}
	case map[string]any:
		w.object(x, elType)
	}
}

// str returns what the string s of element key (of type elType) of an
// object of type owner is replaced with, if it is.
func (w *decodedLinkWalker) str(s, elType, owner, key string) (string, bool) {
	switch {
	case owner == "Reference" && key == "reference":
		return w.fn(linkReference, s)
	case linkTypes[elType]:
		return w.fn(linkURI, s)
	case elType == "xhtml":
		return rewriteNarrative(s, w.fn)
	}
	return "", false
}

// jsonQuote encodes s as a JSON string without escaping <, > and & (which
// XHTML narrative is full of), so unchanged text keeps its bytes.
func jsonQuote(s string) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return bytes.TrimRight(b.Bytes(), "\n")
}

// jsonString decodes a JSON string literal.
func jsonString(lit []byte) string {
	if len(lit) >= 2 && bytes.IndexByte(lit, '\\') < 0 && utf8.Valid(lit) {
		return string(lit[1 : len(lit)-1])
	}
	var s string
	_ = json.Unmarshal(lit, &s)
	return s
}

func skipWS(d []byte, i int) int {
	for i < len(d) && (d[i] == ' ' || d[i] == '\t' || d[i] == '\r' || d[i] == '\n') {
		i++
	}
	return i
}

// jsonStringEnd returns the index just past the string starting at d[i].
func jsonStringEnd(d []byte, i int) int {
	for j := i + 1; j < len(d); j++ {
		switch d[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(d)
}

// jsonValueEnd returns the index just past the value starting at d[i].
func jsonValueEnd(d []byte, i int) int {
	if i >= len(d) {
		return i
	}
	switch d[i] {
	case '"':
		return jsonStringEnd(d, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(d); j++ {
			switch d[j] {
			case '"':
				j = jsonStringEnd(d, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(d)
	}
	j := i
	for j < len(d) && !slices.Contains([]byte(",}] \t\r\n"), d[j]) {
		j++
	}
	return j
}
