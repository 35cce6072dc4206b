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
	want, span := wantBuf[:0], spanBuf[:0]
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
	x := extraction{r: r, res: res}
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
	x := extraction{r: r, res: res}
	for _, i := range rd.params {
		p := pl.params[i]
		if p.reads != nil && !hasAny(res, p.reads) {
			continue
		}
		x.eval(p)
	}
	return x.out, rd.codes
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

func entriesFor(p *Param, n fhirpath.Node) []Entry {
	switch p.Type {
	case "token":
		return tokenEntries(n)
	case "string":
		return stringEntries(n)
	case "reference":
		return referenceEntries(n)
	case "date":
		return dateEntries(n)
	case "number", "quantity":
		return numberEntries(n)
	case "uri":
		if s := str(n.Value); s != "" {
			return []Entry{valueEntry(pfxURI, stripNUL(s))}
		}
	}
	return nil
}

func codeEntries(system, code string) []Entry {
	code, system = stripNUL(code), stripNUL(system)
	if code == "" {
		return nil
	}
	return []Entry{valueEntry(pfxCode, code), valueEntry(pfxSysCode, system+"|"+code)}
}

func textEntry(s string) []Entry {
	if s = Normalize(s); s == "" {
		return nil
	}
	return []Entry{valueEntry(pfxText, s)}
}

func tokenEntries(n fhirpath.Node) []Entry {
	m := obj(n.Value)
	switch n.Type {
	case "Coding":
		return append(codeEntries(str(m["system"]), str(m["code"])), textEntry(str(m["display"]))...)
	case "CodeableConcept":
		var out []Entry
		for _, c := range list(m["coding"]) {
			cm := obj(c)
			out = append(out, codeEntries(str(cm["system"]), str(cm["code"]))...)
			out = append(out, textEntry(str(cm["display"]))...)
		}
		return append(out, textEntry(str(m["text"]))...)
	case "Identifier":
		out := codeEntries(str(m["system"]), str(m["value"]))
		if t := obj(m["type"]); t != nil {
			out = append(out, textEntry(str(t["text"]))...)
		}
		return out
	case "ContactPoint":
		return codeEntries(str(m["system"]), str(m["value"]))
	case "Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "Money":
		return codeEntries(str(m["system"]), str(m["code"]))
	case "Reference":
		if id := obj(m["identifier"]); id != nil {
			return codeEntries(str(id["system"]), str(id["value"]))
		}
		return nil
	}
	if m != nil {
		return nil
	}
	// Primitives: code, string, id, uri, boolean.
	return codeEntries("", str(n.Value))
}

func stringEntries(n fhirpath.Node) []Entry {
	var parts []string
	m := obj(n.Value)
	switch {
	case m == nil:
		parts = []string{str(n.Value)}
	case n.Type == "HumanName":
		parts = append(parts, str(m["family"]), str(m["text"]))
		for _, k := range []string{"given", "prefix", "suffix"} {
			for _, v := range list(m[k]) {
				parts = append(parts, str(v))
			}
		}
	case n.Type == "Address":
		for _, v := range list(m["line"]) {
			parts = append(parts, str(v))
		}
		for _, k := range []string{"city", "district", "state", "postalCode", "country", "text"} {
			parts = append(parts, str(m[k]))
		}
	default:
		// Other complex types searched as strings: take their text-like fields.
		for _, k := range []string{"text", "display", "value", "name"} {
			parts = append(parts, str(m[k]))
		}
	}
	var out []Entry
	for _, s := range parts {
		if s == "" {
			continue
		}
		if nk := Normalize(s); nk != "" {
			out = append(out, valueEntry(pfxNorm, nk))
		}
		out = append(out, valueEntry(pfxExact, stripNUL(s)))
	}
	return out
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

func referenceEntries(n fhirpath.Node) []Entry {
	var ref string
	if m := obj(n.Value); m != nil {
		ref = str(m["reference"])
	} else {
		ref = str(n.Value) // canonical or uri used as a reference
	}
	if ref == "" || strings.HasPrefix(ref, "#") {
		return nil
	}
	return []Entry{valueEntry(pfxRef, stripNUL(NormalizeReference(ref, "")))}
}

func dateEntry(lo, hi int64) Entry {
	return Entry{Key: pfxDate + hexInt(lo), Payload: int64Bytes(hi)}
}

func dateEntries(n fhirpath.Node) []Entry {
	m := obj(n.Value)
	switch {
	case m == nil:
		lo, hi, err := DateRange(str(n.Value))
		if err != nil {
			return nil
		}
		return []Entry{dateEntry(lo, hi)}
	case n.Type == "Period":
		lo, hi := int64(minDate), int64(maxDate)
		if s := str(m["start"]); s != "" {
			l, _, err := DateRange(s)
			if err != nil {
				return nil
			}
			lo = l
		}
		if s := str(m["end"]); s != "" {
			_, h, err := DateRange(s)
			if err != nil {
				return nil
			}
			hi = h
		}
		if lo == minDate && hi == maxDate {
			return nil
		}
		return []Entry{dateEntry(lo, hi)}
	case n.Type == "Timing":
		var out []Entry
		for _, ev := range list(m["event"]) {
			if lo, hi, err := DateRange(str(ev)); err == nil {
				out = append(out, dateEntry(lo, hi))
			}
		}
		if rep := obj(m["repeat"]); rep != nil {
			if b := obj(rep["boundsPeriod"]); b != nil {
				out = append(out, dateEntries(fhirpath.Node{Value: b, Type: "Period"})...)
			}
		}
		return out
	}
	return nil
}

func numberEntries(n fhirpath.Node) []Entry {
	m := obj(n.Value)
	if m == nil {
		v, _, _, err := numberRange(str(n.Value))
		if err != nil {
			return nil
		}
		return []Entry{{Key: pfxNum + hexFloat(v)}}
	}
	switch n.Type {
	case "Range":
		var out []Entry
		for _, k := range []string{"low", "high"} {
			if q := obj(m[k]); q != nil {
				out = append(out, numberEntries(fhirpath.Node{Value: q, Type: "Quantity"})...)
			}
		}
		return out
	case "SampledData":
		return nil
	}
	v, _, _, err := numberRange(str(m["value"]))
	if err != nil {
		return nil
	}
	unit := str(m["system"]) + "|" + str(m["code"]) + "|" + str(m["unit"])
	if n.Type == "Money" {
		unit = "urn:iso:std:iso:4217|" + str(m["currency"]) + "|" + str(m["currency"])
	}
	return []Entry{{Key: pfxNum + hexFloat(v), Payload: []byte(unit)}}
}

// IDEntries returns the index entries of parameter _id for a resource
// whose id is id: those Extract gives.
func IDEntries(id string) []Entry {
	es := codeEntries("", id)
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
