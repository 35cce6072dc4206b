package healthie

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/internal/errs"
)

// A search is answered in two steps: what Healthie can filter on is sent
// to Healthie (narrow), and every parameter is then checked on the mapped
// FHIR resource with FHIR's own semantics (match), so a result is exactly
// what FHIR asks for even where Healthie's keyword search is broader.

type param struct {
	name string
	// narrow tells Healthie about one value (no commas), if it can filter.
	narrow func(n *narrow, v string, f *mapper)
	// match checks one value on the mapped resource.
	match func(res map[string]any, v string, f *mapper) (bool, error)
}

// params are the search parameters the facade supports, per type: exactly
// what the CapabilityStatement lists.
var params = map[string][]param{
	"Patient": {
		{"identifier", keywordNarrow(identifierValue), matchIdentifier},
		{"name", keywordNarrow(nil), matchString("name.family", "name.given", "name.text")},
		{"family", keywordNarrow(nil), matchString("name.family")},
		{"given", keywordNarrow(nil), matchString("name.given")},
		{"birthdate", birthdateNarrow, matchDate("birthDate")},
		{"active", activeNarrow, matchToken("active")},
	},
	"Practitioner": {
		{"identifier", keywordNarrow(identifierValue), matchIdentifier},
		{"name", keywordNarrow(nil), matchString("name.family", "name.given", "name.text")},
		{"family", keywordNarrow(nil), matchString("name.family")},
		{"given", keywordNarrow(nil), matchString("name.given")},
	},
	"PractitionerRole": {
		{"identifier", nil, matchIdentifier},
		{"practitioner", nil, matchRef("Practitioner", "practitioner")},
	},
	"Organization": {
		{"identifier", nil, matchIdentifier},
		{"name", nil, matchString("name")},
	},
	"Location": {
		{"identifier", nil, matchIdentifier},
		{"name", nil, matchString("name")},
	},
	"Appointment": {
		{"patient", refNarrow("Patient", func(n *narrow, id string) { n.patient = id }), matchRef("Patient", "participant.actor")},
		{"practitioner", refNarrow("Practitioner", func(n *narrow, id string) { n.provider = id }), matchRef("Practitioner", "participant.actor")},
		{"date", nil, matchDate("start")},
		{"status", nil, matchToken("status")},
		{"service-type", nil, matchCoding("serviceType")},
		{"identifier", nil, matchIdentifier},
	},
	"Coverage": {
		{"patient", refNarrow("Patient", func(n *narrow, id string) { n.patient = id }), matchRef("Patient", "beneficiary")},
		{"beneficiary", refNarrow("Patient", func(n *narrow, id string) { n.patient = id }), matchRef("Patient", "beneficiary")},
		{"status", nil, matchToken("status")},
		{"identifier", nil, matchIdentifier},
	},
	"Claim": {
		{"patient", refNarrow("Patient", func(n *narrow, id string) { n.patient = id }), matchRef("Patient", "patient")},
		{"provider", refNarrow("Practitioner", func(n *narrow, id string) { n.provider = id }), matchRef("Practitioner", "provider")},
		{"status", nil, matchToken("status")},
		{"created", nil, matchDate("created")},
		{"identifier", nil, matchIdentifier},
	},
}

func paramOf(typ, name string) *param {
	for i := range params[typ] {
		if params[typ][i].name == name {
			return &params[typ][i]
		}
	}
	return nil
}

func identifierValue(v string) string {
	if _, code, ok := strings.Cut(v, "|"); ok {
		return code
	}
	return v
}

func keywordNarrow(transform func(string) string) func(*narrow, string, *mapper) {
	return func(n *narrow, v string, _ *mapper) {
		if transform != nil {
			v = transform(v)
		}
		if v = strings.TrimSpace(v); v != "" {
			n.keywords = strings.TrimSpace(n.keywords + " " + v)
		}
	}
}

func birthdateNarrow(n *narrow, v string, _ *mapper) {
	if len(v) == 10 && v[4] == '-' { // an exact day (no prefix): Healthie matches dob as a keyword
		n.keywords = strings.TrimSpace(n.keywords + " " + v)
	}
}

func activeNarrow(n *narrow, v string, _ *mapper) {
	switch v {
	case "true":
		n.active = "active"
	case "false":
		n.active = "archived"
	}
}

func refNarrow(typ string, set func(*narrow, string)) func(*narrow, string, *mapper) {
	return func(n *narrow, v string, m *mapper) {
		if id, ok := m.hidOf(typ, v); ok {
			set(n, id)
		}
	}
}

// hidOf reads the Healthie id out of a reference search value ("Patient/7",
// "7", or an absolute URL ending in Patient/7).
func (m *mapper) hidOf(typ, v string) (string, bool) {
	if i := strings.LastIndex(v, typ+"/"); i >= 0 {
		v = v[i+len(typ)+1:]
	} else if strings.Contains(v, "/") {
		return "", false
	}
	if v == "" || strings.ContainsAny(v, "/|") {
		return "", false
	}
	if m.prefix != "" {
		var ok bool
		if v, ok = strings.CutPrefix(v, m.prefix); !ok {
			return "", false
		}
	}
	return v, true
}

// values walks a dotted path through objects and arrays.
func values(v any, path string) []any {
	cur := []any{v}
	for _, seg := range strings.Split(path, ".") {
		var next []any
		for _, c := range cur {
			m, ok := c.(map[string]any)
			if !ok {
				continue
			}
			switch x := m[seg].(type) {
			case nil:
			case []any:
				next = append(next, x...)
			default:
				next = append(next, x)
			}
		}
		cur = next
	}
	return cur
}

func norm(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

func matchString(paths ...string) func(map[string]any, string, *mapper) (bool, error) {
	return func(res map[string]any, v string, _ *mapper) (bool, error) {
		want := norm(v)
		for _, p := range paths {
			for _, x := range values(res, p) {
				if s, ok := x.(string); ok && strings.HasPrefix(norm(s), want) {
					return true, nil
				}
			}
		}
		return false, nil
	}
}

func matchToken(path string) func(map[string]any, string, *mapper) (bool, error) {
	return func(res map[string]any, v string, _ *mapper) (bool, error) {
		if _, code, ok := strings.Cut(v, "|"); ok {
			v = code
		}
		for _, x := range values(res, path) {
			if fmt.Sprint(x) == v {
				return true, nil
			}
		}
		return false, nil
	}
}

func matchSystemCode(items []any, v string) bool {
	system, code, hasSystem := strings.Cut(v, "|")
	if !hasSystem {
		code = v
	}
	for _, x := range items {
		m, ok := x.(map[string]any)
		if !ok {
			continue
		}
		sys, _ := m["system"].(string)
		val, _ := m["value"].(string)
		if c, ok := m["code"].(string); ok {
			val = c
		}
		if hasSystem && system != sys {
			continue
		}
		if code == "" || code == val {
			return true
		}
	}
	return false
}

func matchIdentifier(res map[string]any, v string, _ *mapper) (bool, error) {
	return matchSystemCode(values(res, "identifier"), v), nil
}

func matchCoding(path string) func(map[string]any, string, *mapper) (bool, error) {
	return func(res map[string]any, v string, _ *mapper) (bool, error) {
		return matchSystemCode(values(res, path+".coding"), v), nil
	}
}

func matchRef(typ, path string) func(map[string]any, string, *mapper) (bool, error) {
	return func(res map[string]any, v string, m *mapper) (bool, error) {
		hid, ok := m.hidOf(typ, v)
		if !ok {
			return false, nil
		}
		want := typ + "/" + m.id(hid)
		for _, x := range values(res, path+".reference") {
			if x == want {
				return true, nil
			}
		}
		return false, nil
	}
}

// dateRange reads a FHIR date or dateTime search value as [lo, hi).
func dateRange(v string) (time.Time, time.Time, error) {
	layouts := []struct {
		layout string
		next   func(time.Time) time.Time
	}{
		{"2006", func(t time.Time) time.Time { return t.AddDate(1, 0, 0) }},
		{"2006-01", func(t time.Time) time.Time { return t.AddDate(0, 1, 0) }},
		{"2006-01-02", func(t time.Time) time.Time { return t.AddDate(0, 0, 1) }},
		{"2006-01-02T15:04Z07:00", func(t time.Time) time.Time { return t.Add(time.Minute) }},
		{time.RFC3339, func(t time.Time) time.Time { return t.Add(time.Second) }},
		{time.RFC3339Nano, func(t time.Time) time.Time { return t.Add(time.Nanosecond) }},
	}
	for _, l := range layouts {
		if t, err := time.Parse(l.layout, v); err == nil {
			return t.UTC(), l.next(t).UTC(), nil
		}
	}
	return time.Time{}, time.Time{}, errs.E("healthie.search", errs.Invalid, fmt.Sprintf("%q is not a FHIR date or dateTime", v))
}

func matchDate(path string) func(map[string]any, string, *mapper) (bool, error) {
	return func(res map[string]any, v string, _ *mapper) (bool, error) {
		prefix := "eq"
		if len(v) > 2 && v[0] >= 'a' && v[0] <= 'z' {
			prefix, v = v[:2], v[2:]
		}
		lo, hi, err := dateRange(v)
		if err != nil {
			return false, err
		}
		for _, x := range values(res, path) {
			s, _ := x.(string)
			rlo, rhi, err := dateRange(s)
			if err != nil {
				continue
			}
			var ok bool
			switch prefix {
			case "eq":
				ok = !rlo.Before(lo) && !rhi.After(hi)
			case "ne":
				ok = rlo.Before(lo) || rhi.After(hi)
			case "gt", "sa":
				ok = !rlo.Before(hi)
			case "lt", "eb":
				ok = !rhi.After(lo)
			case "ge":
				ok = !rlo.Before(lo)
			case "le":
				ok = rlo.Before(hi)
			default:
				return false, errs.E("healthie.search", errs.Invalid, fmt.Sprintf("%q is not a date prefix (eq, ne, gt, lt, ge, le, sa, eb)", prefix))
			}
			if ok {
				return true, nil
			}
		}
		return false, nil
	}
}

// criterion is one parameter occurrence: its values are ORed.
type criterion struct {
	p      *param
	values []string
}

// query is a parsed facade search.
type query struct {
	typ      string
	ids      []string // _id values (Healthie ids)
	criteria []criterion
	count    int
	cursor   string
	ignored  []string
	kept     [][2]string // the parameters to repeat in paging links
}

// parseQuery checks the parameters against what the facade supports:
// unknown ones and modifiers are refused (or, when lenient, ignored and
// reported).
func parseQuery(typ string, q map[string][]string, lenient bool, m *mapper, defCount, maxCount int) (*query, error) {
	out := &query{typ: typ, count: defCount}
	names := make([]string, 0, len(q))
	for k := range q {
		names = append(names, k)
	}
	sort.Strings(names)
	var issues []errs.Issue
	for _, name := range names {
		vals := q[name]
		switch {
		case name == "_count":
			n := 0
			if _, err := fmt.Sscanf(vals[len(vals)-1], "%d", &n); err != nil || n < 0 {
				issues = append(issues, errs.Issue{Code: "value", Path: name, Message: "_count must be a whole number"})
				continue
			}
			out.count = min(n, maxCount)
			continue
		case name == "_cursor":
			out.cursor = vals[len(vals)-1]
			continue
		case name == "_format" || name == "_pretty":
			continue
		case name == "_id":
			for _, v := range vals {
				for _, id := range strings.Split(v, ",") {
					if hid, ok := m.hidOf(typ, strings.TrimSpace(id)); ok {
						out.ids = append(out.ids, hid)
					} else {
						out.ids = append(out.ids, "\x00") // matches nothing
					}
				}
				out.kept = append(out.kept, [2]string{name, v})
			}
			continue
		}
		p := paramOf(typ, name)
		if p == nil {
			if lenient {
				out.ignored = append(out.ignored, name)
				continue
			}
			issues = append(issues, errs.Issue{Code: "not-supported", Path: name, Message: fmt.Sprintf("the Healthie facade does not support the %s search parameter %q (supported: %s)", typ, name, supportedList(typ))})
			continue
		}
		for _, v := range vals {
			if v == "" {
				continue
			}
			out.criteria = append(out.criteria, criterion{p, strings.Split(v, ",")})
			out.kept = append(out.kept, [2]string{name, v})
		}
	}
	if len(issues) > 0 {
		return nil, errs.E("healthie.search", errs.Invalid, "the search has parameters the Healthie facade cannot answer", issues)
	}
	return out, nil
}

func supportedList(typ string) string {
	names := []string{"_id", "_count"}
	for _, p := range params[typ] {
		names = append(names, p.name)
	}
	return strings.Join(names, ", ")
}

// narrowing collects what Healthie can filter on: single values only, since
// Healthie's filters cannot OR.
func (q *query) narrowing(m *mapper) narrow {
	var n narrow
	for _, c := range q.criteria {
		if c.p.narrow != nil && len(c.values) == 1 {
			c.p.narrow(&n, c.values[0], m)
		}
	}
	return n
}

// matches applies every criterion to a mapped resource.
func (q *query) matches(body []byte, m *mapper) (bool, error) {
	if len(q.criteria) == 0 {
		return true, nil
	}
	var res map[string]any
	if err := json.Unmarshal(body, &res); err != nil {
		return false, err
	}
	for _, c := range q.criteria {
		any := false
		for _, v := range c.values {
			ok, err := c.p.match(res, v, m)
			if err != nil {
				return false, err
			}
			if ok {
				any = true
				break
			}
		}
		if !any {
			return false, nil
		}
	}
	return true, nil
}
