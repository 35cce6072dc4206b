package search

import (
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/internal/errs"
)

// Query is a parsed type-level search.
type Query struct {
	Type       string
	Clauses    []Clause // all must hold
	Sort       []SortKey
	Count      int    // page size
	Total      string // none, estimate or accurate; "" when not asked
	Summary    string // "", count, data, text, false
	Elements   []string
	Include    []Include
	RevInclude []Include
	// Ignored lists parameters dropped under lenient handling, so the
	// response's self link can leave them out.
	Ignored []string
	// Kept is the query string of the parameters that were applied.
	Kept url.Values
	// Compartment, when set, confines the results to the compartment of
	// Patient/<Compartment> (member-scoped access), widened by Linked.
	Compartment string
	// Linked are the Patients linked to Compartment as one person's record
	// (MDM links): their compartments count as the member's, except that
	// for the Patient type each brings only itself, never the Patients
	// that link to it (see Registry.InRecord).
	Linked []string
	// Visible, when set, says which resources the search may look at
	// beyond its own type: the targets a chained parameter matches are
	// only those it reports true for, so that a chain cannot test data
	// the requester may not read.
	Visible func(typ, id string) bool
}

// Clause is one search parameter occurrence: any of its values may match.
type Clause struct {
	Param    *Param
	Modifier string
	Not      bool  // token :not: resources without any of the values
	Missing  *bool // :missing=true|false
	Values   []Value
}

// Value is one alternative of a clause.
type Value struct {
	Raw    string
	Ranges []Range
	// Chain, when set, is a search on a referenced type: the value matches
	// references to the resources it finds.
	Chain *Chain
	// Patient is, for a value of the :mdm modifier, the id of the Patient
	// it names; Query.ExpandMDM widens the value to the Patients linked to
	// it.
	Patient string
	// at, for a date value, reports whether a stored value spanning lo..hi
	// (Unix microseconds, inclusive) satisfies it; fine marks a value
	// finer than the index's milliseconds (an instant with more than 3
	// fractional digits), whose Ranges then only narrow the candidates
	// (see Clause.ByStamp).
	at   func(lo, hi int64) bool
	fine bool
}

// ByStamp reports whether c is a _lastUpdated clause with a value finer
// than the milliseconds its index keeps, such as a client's
// gt<meta.lastUpdated it last saw>: its index ranges then hold every
// resource that may match, including those in the value's boundary
// millisecond that do not, and each candidate is decided by its stored
// meta.lastUpdated (microseconds) with MatchesStamp. FHIR R4
// search.html#date: the value's precision is its range, an instant of 6
// fractional digits one microsecond.
func (c *Clause) ByStamp() bool {
	if c.Param == nil || c.Param.Code != "_lastUpdated" || c.Not || c.Missing != nil {
		return false
	}
	for _, v := range c.Values {
		if v.fine {
			return true
		}
	}
	return false
}

// MatchesStamp reports whether a resource whose meta.lastUpdated is
// lastUpdated (an instant of microsecond precision) satisfies c, a
// _lastUpdated clause: whether any of its values does (see ByStamp).
func (c *Clause) MatchesStamp(lastUpdated time.Time) bool {
	t := lastUpdated.UnixMicro()
	for _, v := range c.Values {
		if v.at != nil && v.at(t, t) {
			return true
		}
	}
	return false
}

// Chain is a chained parameter such as subject:Patient.name=peter.
type Chain struct {
	Types  []string // candidate target types
	Clause func(typ string) (*Clause, error)
}

// Range is a slice of one parameter's index, from Start (inclusive) to End
// (exclusive), over entry keys (before the id). Match, when set, filters the
// entries the range yields by key and payload.
type Range struct {
	Start, End string
	Match      func(key string, payload []byte) bool
	// exact marks a range of one key whose Match only checks the whole
	// value behind the key (see exactValue).
	exact bool
}

// Wide reports whether the range spans a whole parameter index, so that
// answering it from the index means reading every entry.
func (r Range) Wide() bool { return len(r.Start) <= len(pfxCode) }

// Contains reports whether an index entry falls in the range.
func (r Range) Contains(key string, payload []byte) bool {
	return key+"\x00" >= r.Start && key < r.End && (r.Match == nil || r.Match(key, payload))
}

// ExactKeys returns the index entry keys of c's parameter that an entry
// must have to satisfy c when c matches whole keys only (token, reference,
// uri and :exact string values, without :not, :missing or chains). An
// entry with another key never satisfies c; one with these keys still has
// to pass Matches (a long value's key is shared by every value with its
// digest, and the whole value decides). ok is false for any other clause.
// Callers use it to find candidates by key lookup instead of a scan.
func (c *Clause) ExactKeys() (keys []string, ok bool) {
	if c.Not || c.Missing != nil {
		return nil, false
	}
	for _, v := range c.Values {
		if v.Chain != nil || len(v.Ranges) == 0 {
			return nil, false
		}
		for _, r := range v.Ranges {
			k, isExact := strings.CutSuffix(r.Start, "\x00")
			if (r.Match != nil && !r.exact) || !isExact || r.End != k+"\x01" {
				return nil, false
			}
			keys = append(keys, k)
		}
	}
	return keys, len(keys) > 0
}

// Matches reports whether a resource with these index entries satisfies
// the clause (chained values excepted: they need other resources, and are
// never matched here).
func Matches(c *Clause, entries []Entry) bool {
	code := c.Param.Code
	if c.Missing != nil {
		has := false
		for _, e := range entries {
			if e.Param == code {
				has = true
				break
			}
		}
		return has != *c.Missing
	}
	hit := false
	for _, e := range entries {
		if e.Param != code {
			continue
		}
		for _, v := range c.Values {
			for _, r := range v.Ranges {
				if r.Contains(e.Key, e.Payload) {
					hit = true
				}
			}
		}
	}
	return hit != c.Not
}

// SortKey is one _sort key.
type SortKey struct {
	Param *Param
	Desc  bool
}

// Include is an _include or _revinclude: resources of Type referenced by
// (or referencing through) parameter Param, optionally only of TargetType.
// With Iterate (the :iterate modifier, FHIR R4 search.html#include) it
// applies to the included resources too, again and again; Type is then "*"
// for a wildcard that follows every reference of every type.
type Include struct {
	Type       string
	Param      string // "*" for every reference parameter
	TargetType string
	Iterate    bool
}

// Options tune parsing.
type Options struct {
	Base         string // the server's FHIR base URL, to relativize references
	Lenient      bool   // ignore unknown parameters instead of failing
	DefaultCount int
	MaxCount     int
	// MDM accepts HAPI FHIR's :mdm modifier on reference parameters
	// (ModifierMDM); the caller must widen its values with Query.ExpandMDM
	// before searching. Without it :mdm is refused.
	MDM bool
}

// ModifierMDM is HAPI FHIR's :mdm modifier on a reference parameter
// (https://hapifhir.io/hapi-fhir/docs/server_jpa_mdm/mdm_expansion.html):
// subject:mdm=Patient/1 matches references to Patient/1 and to every
// Patient linked to it as the same person. Only references to Patients are
// expanded, and it cannot be chained (as in HAPI).
const ModifierMDM = "mdm"

// ExpandMDM widens each value of the :mdm clauses of q to references to
// the Patient it names and to every Patient linked(id) returns.
func (q *Query) ExpandMDM(linked func(patient string) []string) {
	for i := range q.Clauses {
		c := &q.Clauses[i]
		if c.Modifier != ModifierMDM {
			continue
		}
		for j := range c.Values {
			v := &c.Values[j]
			if v.Patient == "" {
				continue
			}
			v.Ranges = []Range{exact(ReferenceKey("Patient", v.Patient))}
			for _, p := range linked(v.Patient) {
				if p != v.Patient {
					v.Ranges = append(v.Ranges, exact(ReferenceKey("Patient", p)))
				}
			}
		}
	}
}

// HasMDM reports whether q has a clause with the :mdm modifier.
func (q *Query) HasMDM() bool {
	for _, c := range q.Clauses {
		if c.Modifier == ModifierMDM {
			return true
		}
	}
	return false
}

// Control parameters that are not search parameters and that the HTTP layer
// handles itself.
var passthrough = map[string]bool{"_format": true, "_pretty": true, "_page": true, "_cursor": true}

func invalid(format string, args ...any) error {
	return errs.E("search.parse", errs.Invalid, fmt.Sprintf(format, args...))
}

// Parse turns request parameters into a Query for resource type typ.
// Unknown or unsupported parameters and malformed values give an Invalid
// error that names them (unless opts.Lenient, for unknown parameters).
func (r *Registry) Parse(typ string, params url.Values, opts Options) (*Query, error) {
	if opts.DefaultCount == 0 {
		opts.DefaultCount = 20
	}
	if opts.MaxCount == 0 {
		opts.MaxCount = 1000
	}
	q := &Query{Type: typ, Count: opts.DefaultCount, Kept: url.Values{}}
	names := make([]string, 0, len(params))
	for k := range params {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, name := range names {
		vals := params[name]
		if passthrough[name] {
			continue
		}
		keep := true
		var err error
		switch name {
		case "_count":
			q.Count, err = intParam(name, vals, 0, opts.MaxCount)
		case "_total":
			q.Total = last(vals)
			if q.Total != "none" && q.Total != "estimate" && q.Total != "accurate" {
				err = invalid("_total must be none, estimate or accurate")
			}
		case "_summary":
			q.Summary = last(vals)
			switch q.Summary {
			case "true", "count", "data", "text", "false":
			default:
				err = invalid("_summary must be true, text, data, count or false")
			}
		case "_elements":
			var applied []string
			applied, err = r.parseElements(q, vals, opts.Lenient)
			if err == nil {
				if len(applied) == 0 {
					keep = false
				} else {
					vals = []string{strings.Join(applied, ",")}
				}
			}
		case "_sort":
			err = r.parseSort(q, vals)
		case "_include", "_include:iterate", "_revinclude", "_revinclude:iterate":
			err = r.parseIncludes(q, strings.HasPrefix(name, "_revinclude"), strings.HasSuffix(name, ":iterate"), vals)
		default:
			var clauses []Clause
			clauses, err = r.parseParam(typ, name, vals, opts)
			if err != nil && opts.Lenient && errs.Is(err, errs.NotFound) {
				q.Ignored = append(q.Ignored, name)
				keep, err = false, nil
			}
			q.Clauses = append(q.Clauses, clauses...)
		}
		if err != nil {
			if errs.Is(err, errs.NotFound) {
				err = errs.E("search.parse", errs.Invalid, err)
			}
			return nil, err
		}
		if keep {
			q.Kept[name] = vals
		}
	}
	if _, ok := q.Kept["_count"]; ok {
		q.Kept["_count"] = []string{strconv.Itoa(q.Count)} // as applied, after the cap
	}
	if len(q.Elements) > 0 && (q.Summary == "true" || q.Summary == "text" || q.Summary == "data") {
		return nil, invalid("_elements cannot be combined with _summary=%s; use one of them", q.Summary)
	}
	if q.Summary == "text" && (len(q.Include) > 0 || len(q.RevInclude) > 0) {
		return nil, invalid("_include and _revinclude cannot be mixed with _summary=text (FHIR R4 search.html#summary)")
	}
	return q, nil
}

// parseElements reads _elements: top-level element names of the searched
// type, "name" or "Type.name", a choice element by its base name
// ("value", "value[x]") or a concrete one ("valueQuantity"). An element the
// type does not have is an error, or ignored (and named in q.Ignored) under
// lenient handling. It returns the names applied.
func (r *Registry) parseElements(q *Query, vals []string, lenient bool) ([]string, error) {
	var applied []string
	for _, v := range vals {
		for _, e := range strings.Split(v, ",") {
			e = strings.TrimSpace(e)
			if e == "" {
				continue
			}
			name := e
			if t, rest, ok := strings.Cut(e, "."); ok && t == q.Type {
				name = rest
			}
			name = strings.TrimSuffix(name, "[x]")
			_, known := r.model.Element(q.Type, name)
			if (!known && len(r.model.ChoiceElements(q.Type, name)) == 0) || strings.HasPrefix(name, "_") || strings.Contains(name, ".") {
				if lenient {
					q.Ignored = append(q.Ignored, "_elements="+e)
					continue
				}
				return nil, invalid("_elements: %s has no top-level element %q", q.Type, e)
			}
			if !slices.Contains(q.Elements, name) {
				q.Elements = append(q.Elements, name)
				applied = append(applied, e)
			}
		}
	}
	return applied, nil
}

func last(vals []string) string { return vals[len(vals)-1] }

func intParam(name string, vals []string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(last(vals))
	if err != nil || n < lo {
		return 0, invalid("%s must be a whole number of at least %d", name, lo)
	}
	return min(n, hi), nil
}

func (r *Registry) parseSort(q *Query, vals []string) error {
	for _, v := range vals {
		for _, k := range strings.Split(v, ",") {
			k = strings.TrimSpace(k)
			desc := strings.HasPrefix(k, "-")
			k = strings.TrimPrefix(k, "-")
			if k == "" {
				continue
			}
			p, ok := r.Lookup(q.Type, k)
			if !ok {
				return invalid("cannot sort %s by %q: no such search parameter", q.Type, k)
			}
			q.Sort = append(q.Sort, SortKey{Param: p, Desc: desc})
		}
	}
	return nil
}

func (r *Registry) parseIncludes(q *Query, rev, iterate bool, vals []string) error {
	for _, v := range vals {
		parts := strings.Split(v, ":")
		inc := Include{Type: parts[0], Iterate: iterate}
		if v == "*" {
			inc = Include{Type: q.Type, Param: "*", Iterate: iterate}
			if iterate && !rev {
				inc.Type = "*"
			}
		} else if len(parts) < 2 || len(parts) > 3 {
			return invalid("%q is not Type:parameter[:targetType]", v)
		} else {
			inc.Param = parts[1]
			if len(parts) == 3 {
				inc.TargetType = parts[2]
				if !r.model.IsResource(inc.TargetType) {
					return invalid("unknown resource type %q in %q", inc.TargetType, v)
				}
			}
		}
		if !r.model.IsResource(inc.Type) && inc.Type != "*" {
			return invalid("unknown resource type %q in %q", inc.Type, v)
		}
		if !rev && !iterate && inc.Type != q.Type {
			return invalid("_include=%s must name the searched type %s (or use _include:iterate)", v, q.Type)
		}
		if inc.Param != "*" {
			p, ok := r.Lookup(inc.Type, inc.Param)
			if !ok || p.Type != "reference" {
				return invalid("%s has no reference search parameter %q", inc.Type, inc.Param)
			}
		}
		if rev {
			q.RevInclude = append(q.RevInclude, inc)
		} else {
			q.Include = append(q.Include, inc)
		}
	}
	return nil
}

// parseParam parses one parameter name (with modifier or chain) and its
// repeated values: each repetition is a clause (AND), each comma-separated
// value within one an alternative (OR).
func (r *Registry) parseParam(typ, name string, vals []string, opts Options) ([]Clause, error) {
	head, chainRest, chained := strings.Cut(name, ".")
	code, modifier, _ := strings.Cut(head, ":")
	if code == "_has" {
		// Of the kind of an unknown parameter: refused, or left out under
		// handling=lenient (search.html#errors).
		return nil, errs.E("search.parse", errs.NotFound, fmt.Sprintf("%s: _has (reverse chaining, FHIR R4 search.html#has) is not supported; search the referring type and _include the %s instead", name, typ))
	}
	p, ok := r.Lookup(typ, code)
	if !ok {
		return nil, errs.E("search.parse", errs.NotFound, fmt.Sprintf("unknown search parameter %q for %s", code, typ))
	}
	if modifier == ModifierMDM {
		if err := r.checkMDM(p, chained, opts); err != nil {
			return nil, err
		}
	}
	var out []Clause
	for _, raw := range vals {
		c := Clause{Param: p, Modifier: modifier}
		var err error
		switch {
		case chained:
			err = r.parseChain(&c, p, modifier, chainRest, raw, opts)
		case modifier == "missing":
			b, perr := strconv.ParseBool(raw)
			if perr != nil {
				return nil, invalid("%s:missing must be true or false", code)
			}
			c.Missing = &b
		default:
			for _, v := range splitValues(raw) {
				val, verr := r.parseValue(p, modifier, v, opts)
				if verr != nil {
					return nil, verr
				}
				c.Values = append(c.Values, val)
			}
			c.Not = modifier == "not"
		}
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// AcceptsMDM reports whether p accepts the :mdm modifier (when the caller
// allows it, Options.MDM): a reference parameter that may refer to a
// Patient.
func (r *Registry) AcceptsMDM(p *Param) bool {
	return p.Type == "reference" && slices.Contains(r.TargetTypes(p), "Patient")
}

// checkMDM checks that the :mdm modifier may be used on p.
func (r *Registry) checkMDM(p *Param, chained bool, opts Options) error {
	switch {
	case !opts.MDM:
		return invalid("the :mdm modifier is not supported here (%s:mdm)", p.Code)
	case p.Type != "reference":
		return invalid("the :mdm modifier applies to reference parameters; %s is a %s parameter", p.Code, p.Type)
	case chained:
		return invalid("the :mdm modifier cannot be chained (%s:mdm.…); search by the Patient's reference instead", p.Code)
	case !r.AcceptsMDM(p):
		return invalid("the :mdm modifier expands references to Patients, and %s cannot refer to a Patient", p.Code)
	}
	return nil
}

func (r *Registry) parseChain(c *Clause, p *Param, modifier, rest, raw string, opts Options) error {
	if p.Type != "reference" {
		return invalid("%s is not a reference parameter and cannot be chained", p.Code)
	}
	if strings.Contains(rest, ".") {
		return invalid("chains deeper than one level are not supported (%s.%s)", p.Code, rest)
	}
	types := r.TargetTypes(p)
	if modifier != "" {
		if !slices.Contains(types, modifier) {
			return invalid("%s cannot refer to %s", p.Code, modifier)
		}
		types = []string{modifier}
	}
	// Keep the types that have the chained parameter.
	subCode, _, _ := strings.Cut(rest, ":")
	var usable []string
	for _, t := range types {
		if _, ok := r.Lookup(t, subCode); ok {
			usable = append(usable, t)
		}
	}
	if len(usable) == 0 {
		return invalid("no type %s refers to has a search parameter %q", p.Code, subCode)
	}
	ch := &Chain{Types: usable, Clause: func(t string) (*Clause, error) {
		cs, err := r.parseParam(t, rest, []string{raw}, opts)
		if err != nil {
			return nil, err
		}
		return &cs[0], nil
	}}
	// Parse once now so that a bad chained value fails the request up front.
	for _, t := range usable {
		if _, err := ch.Clause(t); err != nil {
			return err
		}
	}
	c.Values = []Value{{Raw: raw, Chain: ch}}
	return nil
}

// splitValues splits on commas not escaped with a backslash, and unescapes.
func splitValues(s string) []string {
	var out []string
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s):
			i++
			b.WriteByte(s[i])
		case s[i] == ',':
			out = append(out, b.String())
			b.Reset()
		default:
			b.WriteByte(s[i])
		}
	}
	return append(out, b.String())
}

// splitPipes splits a token or quantity value on unescaped '|'.
func splitPipes(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
			continue
		}
		if s[i] == '|' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

func exact(k string) Range  { return Range{Start: k + "\x00", End: k + "\x01"} }
func prefix(k string) Range { return Range{Start: k, End: k + "\xff"} }

var modifiersByType = map[string][]string{
	"token":     {"", "not", "text"},
	"string":    {"", "exact", "contains"},
	"reference": {""},
	"date":      {""},
	"number":    {""},
	"quantity":  {""},
	"uri":       {"", "below", "above"},
}

// SupportedModifiers returns the modifiers supported for parameter type t
// (besides missing, which every type supports).
func SupportedModifiers(t string) []string { return modifiersByType[t] }

func (r *Registry) parseValue(p *Param, modifier, v string, opts Options) (Value, error) {
	val := Value{Raw: v}
	if modifier == ModifierMDM {
		return mdmValue(p, v, opts)
	}
	if p.Type == "reference" && r.model.IsResource(modifier) {
		// subject:Patient=123
		val.Ranges = []Range{exactValue(pfxRef, modifier+"/"+v)}
		return val, nil
	}
	if !slices.Contains(modifiersByType[p.Type], modifier) {
		if p.Type == "reference" && modifier == "identifier" {
			// search.html#reference: it matches Reference.identifier,
			// which the reference indexes do not hold.
			return val, invalid("modifier :identifier is not supported on reference parameter %s (it would match the identifier written in the reference); %s.identifier matches the identifier of the resource referred to", p.Code, p.Code)
		}
		return val, invalid("modifier :%s is not supported on %s parameter %s", modifier, p.Type, p.Code)
	}
	if v == "" {
		return val, invalid("empty value for %s", p.Code)
	}
	switch p.Type {
	case "token":
		if modifier == "text" {
			val.Ranges = []Range{prefixValue(pfxText, Normalize(v))}
			break
		}
		parts := splitPipes(v)
		unesc := func(s string) string { return strings.NewReplacer(`\|`, "|", `\$`, "$", `\\`, `\`).Replace(s) }
		switch len(parts) {
		case 1:
			val.Ranges = []Range{exactValue(pfxCode, unesc(parts[0]))}
		case 2:
			sys, code := unesc(parts[0]), unesc(parts[1])
			if code == "" {
				val.Ranges = []Range{prefixValue(pfxSysCode, sys+"|")}
			} else {
				val.Ranges = []Range{exactValue(pfxSysCode, sys+"|"+code)}
			}
		default:
			return val, invalid("%q is not a token (system|code)", v)
		}
	case "string":
		switch modifier {
		case "exact":
			val.Ranges = []Range{exactValue(pfxExact, v)}
		case "contains":
			n := Normalize(v)
			val.Ranges = []Range{{Start: pfxNorm, End: pfxNorm + "\xff", Match: func(k string, payload []byte) bool {
				return strings.Contains(entryValue(pfxNorm, k, payload), n)
			}}}
		default:
			val.Ranges = []Range{prefixValue(pfxNorm, Normalize(v))}
		}
	case "reference":
		ref := NormalizeReference(v, opts.Base)
		if strings.Contains(ref, "/") {
			val.Ranges = []Range{exactValue(pfxRef, ref)}
			break
		}
		for _, t := range r.TargetTypes(p) {
			val.Ranges = append(val.Ranges, exactValue(pfxRef, t+"/"+ref))
		}
	case "uri":
		switch modifier {
		case "below":
			val.Ranges = []Range{prefixValue(pfxURI, v)}
		case "above":
			val.Ranges = []Range{{Start: pfxURI, End: pfxURI + "\xff", Match: func(k string, payload []byte) bool {
				return strings.HasPrefix(v, entryValue(pfxURI, k, payload))
			}}}
		default:
			val.Ranges = []Range{exactValue(pfxURI, v)}
		}
	case "date":
		rg, at, fine, err := dateValueRange(p.Code, v)
		if err != nil {
			return val, err
		}
		val.Ranges, val.at, val.fine = []Range{rg}, at, fine
	case "number", "quantity":
		rg, err := numberValueRange(p, v)
		if err != nil {
			return val, err
		}
		val.Ranges = []Range{rg}
	}
	return val, nil
}

// mdmValue parses the value of p:mdm: Patient/id, id, or an absolute URL
// of a Patient on this server. Until Query.ExpandMDM it matches the Patient
// itself only.
func mdmValue(p *Param, v string, opts Options) (Value, error) {
	val := Value{Raw: v}
	ref := NormalizeReference(v, opts.Base)
	id, ok := strings.CutPrefix(ref, "Patient/")
	if !ok && !strings.Contains(ref, "/") {
		id, ok = ref, true
	}
	if !ok || id == "" || strings.ContainsAny(id, "/:?#") {
		return val, invalid("%s:mdm=%s: the :mdm modifier expands references to Patients on this server (Patient/<id>)", p.Code, v)
	}
	val.Patient = id
	val.Ranges = []Range{exact(ReferenceKey("Patient", id))}
	return val, nil
}

var prefixes = []string{"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"}

func cutPrefix(v string) (string, string) {
	if len(v) > 2 && slices.Contains(prefixes, v[:2]) {
		return v[:2], v[2:]
	}
	return "eq", v
}

// dateValueRange returns the index range of a date value, a test of a
// stored value's microsecond range (at), and whether the value is finer
// than the index's milliseconds (fine). The prefixes compare ranges (FHIR
// R4 search.html#date): eq the stored range within the value's, ne not,
// gt/lt the stored range ending after / starting before it, ge/le gt/lt
// or eq, sa/eb the stored range starting after / ending before it.
//
// For a fine _lastUpdated value the index range holds the value's
// boundary milliseconds too, where the index cannot tell before from
// after: the stored meta.lastUpdated decides (see Clause.ByStamp). For
// other parameters a fine value is compared at the millisecond.
func dateValueRange(code, v string) (Range, func(lo, hi int64) bool, bool, error) {
	pre, s := cutPrefix(v)
	plo, phi, err := DateRange(s)
	if err != nil {
		return Range{}, nil, false, invalid("%s: %v", code, err)
	}
	ulo, uhi, err := dateRangeMicro(s)
	if err != nil {
		return Range{}, nil, false, invalid("%s: %v", code, err)
	}
	fine := code == "_lastUpdated" && (ulo != plo*1000 || uhi != phi*1000+999)
	// inB (the stored range within the value's) and at, in microseconds.
	inU := func(lo, hi int64) bool { return lo >= ulo && hi <= uhi }
	var at func(lo, hi int64) bool
	switch pre {
	case "eq":
		at = inU
	case "ne":
		at = func(lo, hi int64) bool { return !inU(lo, hi) }
	case "gt":
		at = func(_, hi int64) bool { return hi > uhi }
	case "lt":
		at = func(lo, _ int64) bool { return lo < ulo }
	case "ge":
		at = func(lo, hi int64) bool { return hi > uhi || inU(lo, hi) }
	case "le":
		at = func(lo, hi int64) bool { return lo < ulo || inU(lo, hi) }
	case "sa":
		at = func(lo, _ int64) bool { return lo > uhi }
	case "eb":
		at = func(_, hi int64) bool { return hi < ulo }
	case "ap":
		pad := max((phi-plo)/10, 24*3600*1000) * 1000
		at = func(lo, hi int64) bool { return hi >= ulo-pad && lo <= uhi+pad }
	}
	all := Range{Start: pfxDate, End: pfxDate + "\xff"}
	span := phi - plo
	// An entry stands for every item of the resource starting at its
	// key: it matches when one of their upper bounds does (see
	// mergePayload).
	match := func(f func(lo, hi int64) bool) func(string, []byte) bool {
		return func(k string, payload []byte) bool {
			lo, ok := parseHexInt(k[len(pfxDate):])
			if !ok {
				return false
			}
			if len(payload) < 8 {
				return f(lo, bytesInt64(payload))
			}
			for ; len(payload) >= 8; payload = payload[8:] {
				if f(lo, bytesInt64(payload)) {
					return true
				}
			}
			return false
		}
	}
	within := func(lo, hi int64) bool { return lo >= plo && hi <= phi }
	if fine {
		// The value lies in one millisecond, plo (= phi): an entry of
		// that millisecond may be on either side of it, so it is kept
		// whatever the prefix, and the stamp decides.
		switch pre {
		case "eq":
			return Range{Start: pfxDate + hexInt(plo), End: pfxDate + hexInt(phi+1), Match: match(within)}, at, true, nil
		case "gt", "ge":
			all.Match = match(func(_, hi int64) bool { return hi >= phi })
		case "lt", "le":
			return Range{Start: pfxDate, End: pfxDate + hexInt(phi+1)}, at, true, nil
		case "sa":
			return Range{Start: pfxDate + hexInt(phi), End: pfxDate + "\xff"}, at, true, nil
		case "eb":
			all.Match = match(func(_, hi int64) bool { return hi <= plo })
		}
		return all, at, true, nil
	}
	switch pre {
	case "eq":
		return Range{Start: pfxDate + hexInt(plo), End: pfxDate + hexInt(phi+1), Match: match(within)}, at, false, nil
	case "ne":
		all.Match = match(func(lo, hi int64) bool { return !within(lo, hi) })
	case "gt":
		all.Match = match(func(_, hi int64) bool { return hi > phi })
	case "lt":
		return Range{Start: pfxDate, End: pfxDate + hexInt(plo), Match: match(func(lo, _ int64) bool { return lo < plo })}, at, false, nil
	case "ge":
		all.Match = match(func(lo, hi int64) bool { return hi > phi || within(lo, hi) })
	case "le":
		return Range{Start: pfxDate, End: pfxDate + hexInt(phi+1), Match: match(func(lo, hi int64) bool { return lo < plo || within(lo, hi) })}, at, false, nil
	case "sa":
		return Range{Start: pfxDate + hexInt(phi+1), End: pfxDate + "\xff"}, at, false, nil
	case "eb":
		all.Match = match(func(_, hi int64) bool { return hi < plo })
	case "ap":
		// Approximately: within 10% of the distance from now, at least a day.
		pad := max(span/10, 24*3600*1000)
		all.Match = match(func(lo, hi int64) bool { return hi >= plo-pad && lo <= phi+pad })
	}
	return all, at, false, nil
}

func numberValueRange(p *Param, v string) (Range, error) {
	pre, s := cutPrefix(v)
	var unitSys, unitCode string
	if p.Type == "quantity" {
		parts := splitPipes(s)
		s = parts[0]
		switch len(parts) {
		case 1:
		case 3:
			unitSys, unitCode = parts[1], parts[2]
		default:
			return Range{}, invalid("%q is not a quantity (number|system|code)", v)
		}
	}
	num, lo, hi, err := numberRange(s)
	if err != nil {
		return Range{}, invalid("%s: %v", p.Code, err)
	}
	// An entry stands for every item of the resource with its number:
	// one of their units must be the one asked for (see mergePayload).
	unitOK := func(payload []byte) bool {
		if unitCode == "" {
			return true
		}
		for unit := range strings.SplitSeq(string(payload), "\x00") {
			parts := strings.SplitN(unit, "|", 3)
			if len(parts) != 3 {
				continue
			}
			if unitSys == "" && (parts[1] == unitCode || parts[2] == unitCode) || unitSys != "" && parts[0] == unitSys && parts[1] == unitCode {
				return true
			}
		}
		return false
	}
	var test func(x float64) bool
	switch pre {
	case "eq":
		test = func(x float64) bool { return x >= lo && x < hi }
	case "ne":
		test = func(x float64) bool { return x < lo || x >= hi }
	case "gt", "sa":
		test = func(x float64) bool { return x > num }
	case "lt", "eb":
		test = func(x float64) bool { return x < num }
	case "ge":
		test = func(x float64) bool { return x >= num }
	case "le":
		test = func(x float64) bool { return x <= num }
	case "ap":
		d := math.Abs(num) * 0.1
		test = func(x float64) bool { return x >= num-d && x <= num+d }
	}
	return Range{Start: pfxNum, End: pfxNum + "\xff", Match: func(k string, payload []byte) bool {
		x, ok := parseHexFloat(k[len(pfxNum):])
		return ok && test(x) && unitOK(payload)
	}}, nil
}

var sortPrefix = map[string]string{
	"string": pfxNorm, "token": pfxCode, "date": pfxDate, "number": pfxNum,
	"quantity": pfxNum, "reference": pfxRef, "uri": pfxURI,
}

// SortValue picks, from the index entries a resource has for a parameter,
// the value to sort by (the smallest ascending, the largest descending),
// and reports whether there was one. Entries must be the parameter's. A
// value longer than an index key is compared whole (its payload), never by
// its clipped key and digest: _sort orders by the element's value (FHIR R4
// search.html#sort), whatever its length.
func SortValue(p *Param, entries []Entry, desc bool) (string, bool) {
	want := sortPrefix[p.Type]
	whole := want == pfxNorm || want == pfxCode || want == pfxRef || want == pfxURI
	var best string
	found := false
	for _, e := range entries {
		if !strings.HasPrefix(e.Key, want) {
			continue
		}
		k := e.Key
		if whole {
			k = want + entryValue(want, e.Key, e.Payload)
		} else if k == legacyNegZero {
			k = pfxNum + hexFloat(0)
		}
		if !found || (desc && k > best) || (!desc && k < best) {
			best, found = k, true
		}
	}
	return best, found
}

// StampSortValue is the sort value of a resource for _sort=_lastUpdated
// by its stored meta.lastUpdated, to the microsecond: the form of
// SortValue's date values (which are milliseconds), ordered by the
// instant. Values of both forms are never compared with each other.
func StampSortValue(lastUpdated time.Time) string {
	return pfxDate + hexInt(lastUpdated.UnixMicro())
}

// legacyNegZero is the key hexFloat wrote for -0 before it wrote 0's (see
// parseHexFloat): stored entries of a database of then still have it,
// and _sort orders it as 0.
var legacyNegZero = pfxNum + "0000000000000000"

// ReferenceKey returns the index key under which a reference parameter
// stores a reference to typ/id, for _revinclude and compartments.
func ReferenceKey(typ, id string) string { return pfxRef + typ + "/" + id }

// ReferenceFromKey returns the reference held by a reference index key.
func ReferenceFromKey(k string) (string, bool) {
	return strings.CutPrefix(k, pfxRef)
}
