package search

import (
	"encoding/json"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/fhirpath"
)

// Entry is one index entry of a resource: under parameter Param, the key
// (a value encoding that sorts as the value does) and an optional payload
// (a date's upper bound, a quantity's unit).
type Entry struct {
	Param   string
	Key     string
	Payload []byte
}

// Extract computes every index entry of res, a decoded resource of type typ
// (numbers as json.Number), in the order of the parameters' codes, those
// of a parameter with Sources last. Duplicate entries are removed. A
// parameter whose expression reads only elements res does not have is
// not evaluated, and one with Sources takes its entries from theirs
// when their keys tell which are its own (see Decides).
func (r *Registry) Extract(typ string, res map[string]any) []Entry {
	pl := r.plans[typ]
	if pl == nil {
		return nil
	}
	n := len(pl.params)
	var wantBuf [128]bool
	var spanBuf [128][2]int32
	var want []bool
	var span [][2]int32
	if n <= len(wantBuf) {
		want, span = wantBuf[:n], spanBuf[:n]
	} else {
		want, span = make([]bool, n), make([][2]int32, n)
	}
	for _, i := range pl.always {
		want[i] = true
	}
	for name := range res {
		for _, i := range pl.byElement[name] {
			want[i] = true
		}
	}
	x := extraction{r: r, res: res, keysFrom: -1}
	for i, p := range pl.params {
		if want[i] {
			start := x.eval(p)
			span[i] = [2]int32{int32(start), int32(len(x.out))}
		}
	}
	for _, d := range pl.derived {
		if !x.derive(pl, d, span) {
			x.eval(pl.params[d.at])
		}
	}
	return x.out
}

// ExtractReading computes the index entries of res (as Extract does) of
// only the parameters of typ whose expression may read the top-level
// element name (those whose elements read are not known included), and
// returns those parameters' codes: a caller that changed only name in res
// replaces the entries of these parameters with the ones returned, and
// has every entry Extract would give. The map of codes is shared by every
// call with the same typ and name: callers must not modify it.
func (r *Registry) ExtractReading(typ, name string, res map[string]any) ([]Entry, map[string]bool) {
	pl := r.plans[typ]
	if pl == nil {
		return nil, map[string]bool{}
	}
	rd := pl.reading(name)
	x := extraction{r: r, res: res, keysFrom: -1}
	for _, i := range rd.params {
		p := pl.params[i]
		if p.reads != nil && !hasAny(res, p.reads) {
			continue
		}
		x.eval(p)
	}
	return x.out, rd.codes
}

// ReadAlong returns the top-level elements of a resource of type typ that
// ExtractReading(typ, name, res) reads: name and every element read by
// the parameters that may read name. known is false when one of those
// parameters reads elements not known ahead (then any element may count).
// The slice is shared: callers must not modify it.
func (r *Registry) ReadAlong(typ, name string) (elements []string, known bool) {
	pl := r.plans[typ]
	if pl == nil {
		return []string{name}, true
	}
	rd := pl.reading(name)
	return rd.along, rd.alongKnown
}

func hasAny(res map[string]any, names []string) bool {
	for _, n := range names {
		if _, ok := res[n]; ok {
			return true
		}
	}
	return false
}

func str(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case json.Number:
		return x.String()
	case bool:
		if x {
			return "true"
		}
		return "false"
	}
	return ""
}

func obj(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

func list(v any) []any {
	switch x := v.(type) {
	case []any:
		return x
	case nil:
		return nil
	default:
		return []any{x}
	}
}

// appendEntries appends to dst the entries of parameter p (of its type)
// that the item n gives.
func appendEntries(dst []Entry, p *Param, n fhirpath.Node) []Entry {
	switch p.Type {
	case "token":
		return appendToken(dst, n)
	case "string":
		return appendString(dst, n)
	case "reference":
		return appendReference(dst, n)
	case "date":
		return appendDate(dst, n)
	case "number", "quantity":
		return appendNumber(dst, n)
	case "uri":
		if s := str(n.Value); s != "" {
			return append(dst, valueEntry(pfxURI, stripNUL(s)))
		}
	}
	return dst
}

// entriesFor returns the entries of parameter p that the item n gives.
func entriesFor(p *Param, n fhirpath.Node) []Entry { return appendEntries(nil, p, n) }

func appendCode(dst []Entry, system, code string) []Entry {
	code, system = stripNUL(code), stripNUL(system)
	if code == "" {
		return dst
	}
	return append(dst, valueEntry(pfxCode, code), valueEntry(pfxSysCode, system+"|"+code))
}

func appendText(dst []Entry, s string) []Entry {
	if s = Normalize(s); s == "" {
		return dst
	}
	return append(dst, valueEntry(pfxText, s))
}

func appendToken(dst []Entry, n fhirpath.Node) []Entry {
	m := obj(n.Value)
	switch n.Type {
	case "Coding":
		return appendText(appendCode(dst, str(m["system"]), str(m["code"])), str(m["display"]))
	case "CodeableConcept":
		for _, c := range list(m["coding"]) {
			cm := obj(c)
			dst = appendCode(dst, str(cm["system"]), str(cm["code"]))
			dst = appendText(dst, str(cm["display"]))
		}
		return appendText(dst, str(m["text"]))
	case "Identifier":
		dst = appendCode(dst, str(m["system"]), str(m["value"]))
		if t := obj(m["type"]); t != nil {
			dst = appendText(dst, str(t["text"]))
		}
		return dst
	case "ContactPoint":
		return appendCode(dst, str(m["system"]), str(m["value"]))
	case "Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "Money":
		return appendCode(dst, str(m["system"]), str(m["code"]))
	case "Reference":
		if id := obj(m["identifier"]); id != nil {
			return appendCode(dst, str(id["system"]), str(id["value"]))
		}
		return dst
	}
	if m != nil {
		return dst
	}
	// Primitives: code, string, id, uri, boolean.
	return appendCode(dst, "", str(n.Value))
}

// stringFields are the fields of a complex type searched as a string,
// in the order their entries come.
var (
	humanNameLists = []string{"given", "prefix", "suffix"}
	addressFields  = []string{"city", "district", "state", "postalCode", "country", "text"}
	otherFields    = []string{"text", "display", "value", "name"}
)

func appendString(dst []Entry, n fhirpath.Node) []Entry {
	m := obj(n.Value)
	switch {
	case m == nil:
		return appendStringPart(dst, str(n.Value))
	case n.Type == "HumanName":
		dst = appendStringPart(dst, str(m["family"]))
		dst = appendStringPart(dst, str(m["text"]))
		for _, k := range humanNameLists {
			for _, v := range list(m[k]) {
				dst = appendStringPart(dst, str(v))
			}
		}
	case n.Type == "Address":
		for _, v := range list(m["line"]) {
			dst = appendStringPart(dst, str(v))
		}
		for _, k := range addressFields {
			dst = appendStringPart(dst, str(m[k]))
		}
	default:
		// Other complex types searched as strings: take their text-like fields.
		for _, k := range otherFields {
			dst = appendStringPart(dst, str(m[k]))
		}
	}
	return dst
}

// appendStringPart appends the entries of one string of a string
// parameter's item: normalized and as written.
func appendStringPart(dst []Entry, s string) []Entry {
	if s == "" {
		return dst
	}
	if nk := Normalize(s); nk != "" {
		dst = append(dst, valueEntry(pfxNorm, nk))
	}
	return append(dst, valueEntry(pfxExact, stripNUL(s)))
}

// NormalizeReference turns a reference string into its indexed form:
// "Patient/1/_history/2" becomes "Patient/1"; an absolute URL under base
// becomes relative.
func NormalizeReference(ref, base string) string {
	if base != "" && strings.HasPrefix(ref, base+"/") {
		ref = ref[len(base)+1:]
	}
	if i := strings.Index(ref, "/_history/"); i > 0 {
		ref = ref[:i]
	}
	return ref
}

func appendReference(dst []Entry, n fhirpath.Node) []Entry {
	var ref string
	if m := obj(n.Value); m != nil {
		ref = str(m["reference"])
	} else {
		ref = str(n.Value) // canonical or uri used as a reference
	}
	if ref == "" || strings.HasPrefix(ref, "#") {
		return dst
	}
	return append(dst, valueEntry(pfxRef, stripNUL(NormalizeReference(ref, ""))))
}

func dateEntry(lo, hi int64) Entry {
	return Entry{Key: pfxDate + hexInt(lo), Payload: int64Bytes(hi)}
}

func appendDate(dst []Entry, n fhirpath.Node) []Entry {
	m := obj(n.Value)
	switch {
	case m == nil:
		lo, hi, err := DateRange(str(n.Value))
		if err != nil {
			return dst
		}
		return append(dst, dateEntry(lo, hi))
	case n.Type == "Period":
		lo, hi := int64(minDate), int64(maxDate)
		if s := str(m["start"]); s != "" {
			l, _, err := DateRange(s)
			if err != nil {
				return dst
			}
			lo = l
		}
		if s := str(m["end"]); s != "" {
			_, h, err := DateRange(s)
			if err != nil {
				return dst
			}
			hi = h
		}
		if lo == minDate && hi == maxDate {
			return dst
		}
		return append(dst, dateEntry(lo, hi))
	case n.Type == "Timing":
		for _, ev := range list(m["event"]) {
			if lo, hi, err := DateRange(str(ev)); err == nil {
				dst = append(dst, dateEntry(lo, hi))
			}
		}
		if rep := obj(m["repeat"]); rep != nil {
			if b := obj(rep["boundsPeriod"]); b != nil {
				dst = appendDate(dst, fhirpath.Node{Value: b, Type: "Period"})
			}
		}
		return dst
	}
	return dst
}

func appendNumber(dst []Entry, n fhirpath.Node) []Entry {
	m := obj(n.Value)
	if m == nil {
		v, _, _, err := numberRange(str(n.Value))
		if err != nil {
			return dst
		}
		return append(dst, Entry{Key: pfxNum + hexFloat(v)})
	}
	switch n.Type {
	case "Range":
		for _, k := range []string{"low", "high"} {
			if q := obj(m[k]); q != nil {
				dst = appendNumber(dst, fhirpath.Node{Value: q, Type: "Quantity"})
			}
		}
		return dst
	case "SampledData":
		return dst
	}
	v, _, _, err := numberRange(str(m["value"]))
	if err != nil {
		return dst
	}
	unit := str(m["system"]) + "|" + str(m["code"]) + "|" + str(m["unit"])
	if n.Type == "Money" {
		unit = "urn:iso:std:iso:4217|" + str(m["currency"]) + "|" + str(m["currency"])
	}
	// NUL separates the units of items with the same number (see
	// mergePayload).
	unit = stripNUL(unit)
	return append(dst, Entry{Key: pfxNum + hexFloat(v), Payload: []byte(unit)})
}

// IDEntries returns the index entries of parameter _id for a resource
// whose id is id: those Extract gives.
func IDEntries(id string) []Entry {
	es := appendCode(nil, "", id)
	for i := range es {
		es[i].Param = "_id"
	}
	return es
}

// IDFromKey returns the id that an _id index entry with key k names (see
// IDEntries); ok is false when no _id entry has key k.
func IDFromKey(k string) (id string, ok bool) {
	if id, ok := strings.CutPrefix(k, pfxCode); ok {
		return id, true
	}
	return strings.CutPrefix(k, pfxSysCode+"|")
}
