package search

import (
	"math"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/spec"
)

var reg = NewRegistry(spec.R4())

func ms(s string) int64 {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t.UnixMilli()
}

func TestDateRangePrecision(t *testing.T) {
	cases := []struct {
		in     string
		lo, hi string
	}{
		{"2024", "2024-01-01T00:00:00Z", "2024-12-31T23:59:59.999Z"},
		{"2024-02", "2024-02-01T00:00:00Z", "2024-02-29T23:59:59.999Z"},
		{"2023-02-28", "2023-02-28T00:00:00Z", "2023-02-28T23:59:59.999Z"},
		{"2024-01-15T10:00", "2024-01-15T10:00:00Z", "2024-01-15T10:00:59.999Z"},
		{"2024-01-15T10:00:05Z", "2024-01-15T10:00:05Z", "2024-01-15T10:00:05.999Z"},
		{"2024-01-15T10:00:05+02:00", "2024-01-15T08:00:05Z", "2024-01-15T08:00:05.999Z"},
		{"2024-01-15T10:00:05.5-05:00", "2024-01-15T15:00:05.5Z", "2024-01-15T15:00:05.599Z"},
		{"2024-01-15T10:00:05.123456Z", "2024-01-15T10:00:05.123Z", "2024-01-15T10:00:05.123Z"},
	}
	for _, c := range cases {
		lo, hi, err := DateRange(c.in)
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		if lo != ms(c.lo) || hi != ms(c.hi) {
			t.Errorf("%s: [%s, %s], want [%s, %s]", c.in,
				time.UnixMilli(lo).UTC().Format(time.RFC3339Nano), time.UnixMilli(hi).UTC().Format(time.RFC3339Nano), c.lo, c.hi)
		}
	}
	for _, bad := range []string{"", "24", "2024-13", "2024-02-30", "2024-01-15T25:00", "2024-01-15 10:00", "yesterday", "2024-01-15T10"} {
		if _, _, err := DateRange(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestNumberImplicitPrecision(t *testing.T) {
	cases := []struct {
		in     string
		lo, hi float64
	}{
		{"100", 99.5, 100.5},
		{"100.0", 99.95, 100.05},
		{"1.50", 1.495, 1.505},
		{"1e2", 50, 150},
		{"-3", -3.5, -2.5},
	}
	for _, c := range cases {
		_, lo, hi, err := numberRange(c.in)
		if err != nil || abs(lo-c.lo) > 1e-9 || abs(hi-c.hi) > 1e-9 {
			t.Errorf("%s: [%v, %v] %v, want [%v, %v]", c.in, lo, hi, err, c.lo, c.hi)
		}
	}
	for _, bad := range []string{"", "abc", "NaN", "Inf", "1,5"} {
		if _, _, _, err := numberRange(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

func TestNormalizeFoldsCaseAndAccents(t *testing.T) {
	for in, want := range map[string]string{
		"Müller": "muller", "  JOSÉ   María ": "jose maria", "Ørsted": "ørsted", "ÅNGSTRÖM": "angstrom", "a\x00b": "ab",
	} {
		if got := Normalize(in); got != want {
			t.Errorf("Normalize(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSortableEncodings(t *testing.T) {
	floats := []float64{-1e9, -2.5, -0.1, 0, 0.1, 2.5, 1e9}
	for i := 1; i < len(floats); i++ {
		if hexFloat(floats[i-1]) >= hexFloat(floats[i]) {
			t.Errorf("hexFloat order broken between %v and %v", floats[i-1], floats[i])
		}
		if back, _ := parseHexFloat(hexFloat(floats[i])); back != floats[i] {
			t.Errorf("hexFloat round trip %v -> %v", floats[i], back)
		}
	}
	ints := []int64{minDate, -5, 0, 5, maxDate}
	for i := 1; i < len(ints); i++ {
		if hexInt(ints[i-1]) >= hexInt(ints[i]) {
			t.Errorf("hexInt order broken between %v and %v", ints[i-1], ints[i])
		}
	}
}

func TestSplitValuesEscapes(t *testing.T) {
	got := splitValues(`a,b\,c,d\\,e`)
	want := []string{"a", "b,c", `d\`, "e"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestParseRefusesWhatItCannotDo(t *testing.T) {
	cases := map[string]string{
		"colour=blue":                        "unknown search parameter",
		"name:below=x":                       "not supported",
		"birthdate=2024-13":                  "birthdate",
		"_count=-1":                          "_count",
		"_count=many":                        "_count",
		"_sort=colour":                       "colour",
		"_include=Observation:subject":       "must name the searched type",
		"_include=Patient:name":              "no reference search parameter",
		"_revinclude=Nope:x":                 "unknown resource type",
		"general-practitioner.name.family=x": "deeper than one level",
		"_summary=yes":                       "_summary must be",
		"_summary=text&_include=Patient:organization": "cannot be mixed with _summary=text",
		"_summary=true&_elements=name":                "cannot be combined",
		"_elements=colour":                            "no top-level element",
		"_elements=Observation.code":                  "no top-level element",
		"_elements=name.family":                       "no top-level element",
		"_include:iterate=Nope:x":                     "unknown resource type",
		"_include:iterate=Observation:nonsense":       "no reference search parameter",
		"_total=exact":                                "_total",
		"name:missing=maybe":                          "true or false",
		"identifier=a|b|c":                            "not a token",
		"gender=":                                     "empty value",
	}
	for q, says := range cases {
		vals, _ := url.ParseQuery(q)
		_, err := reg.Parse("Patient", vals, Options{})
		if err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("%s: error %v, want one saying %q", q, err, says)
		}
	}
	vals, _ := url.ParseQuery("colour=blue&name=x")
	q, err := reg.Parse("Patient", vals, Options{Lenient: true})
	if err != nil || len(q.Ignored) != 1 || q.Ignored[0] != "colour" || len(q.Clauses) != 1 {
		t.Errorf("lenient parse: %+v %v", q, err)
	}
}

func TestRegistryCoversTheExchangeTypes(t *testing.T) {
	want := map[string][]string{
		"Patient":                     {"identifier", "family", "given", "birthdate", "gender", "name", "_id", "_lastUpdated"},
		"Observation":                 {"code", "subject", "patient", "date", "value-quantity", "category", "status"},
		"ExplanationOfBenefit":        {"patient", "identifier", "created", "provider", "status"},
		"Coverage":                    {"beneficiary", "payor", "identifier", "subscriber"},
		"Provenance":                  {"target", "recorded", "agent", "patient"},
		"Task":                        {"code", "status", "requester", "owner", "identifier", "authored-on", "modified"},
		"Subscription":                {"criteria", "status", "type", "url"},
		"CoverageEligibilityResponse": {"request", "patient", "outcome", "created"},
		"Consent":                     {"patient", "status", "category"},
	}
	for typ, codes := range want {
		for _, c := range codes {
			if _, ok := reg.Lookup(typ, c); !ok {
				t.Errorf("%s has no search parameter %s", typ, c)
			}
		}
	}
}

// TestExactKeysOfLongValues: a clause on a value longer than an index key
// still offers its key for lookups, and the entry of a resource holding the
// value has that key and satisfies the clause; one holding only the first
// 480 bytes does not.
func TestExactKeysOfLongValues(t *testing.T) {
	long := strings.Repeat("9", 600)
	q, err := reg.Parse("Patient", url.Values{"identifier": {"urn:s|" + long}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := &q.Clauses[0]
	keys, ok := c.ExactKeys()
	if !ok || len(keys) != 1 {
		t.Fatalf("ExactKeys: %v %v", keys, ok)
	}
	for _, value := range []string{long, long[:480]} {
		entries := reg.Extract("Patient", map[string]any{"resourceType": "Patient", "id": "x",
			"identifier": []any{map[string]any{"system": "urn:s", "value": value}}})
		hasKey := false
		for _, e := range entries {
			hasKey = hasKey || (e.Param == "identifier" && e.Key == keys[0])
		}
		if want := value == long; hasKey != want || Matches(c, entries) != want {
			t.Errorf("value of %d bytes: has the key %v, matches %v; want %v", len(value), hasKey, Matches(c, entries), want)
		}
	}
}

// TestHex16: date and number keys hold 16 hex digits that sort as the
// values do.
func TestHex16(t *testing.T) {
	for _, c := range []struct {
		v    int64
		want string
	}{
		{0, "8000000000000000"}, {1, "8000000000000001"}, {-1, "7fffffffffffffff"},
		{math.MaxInt64, "ffffffffffffffff"}, {math.MinInt64, "0000000000000000"}, {0x1234abcd, "800000001234abcd"},
	} {
		if got := hexInt(c.v); got != c.want {
			t.Errorf("hexInt(%d) = %s, want %s", c.v, got, c.want)
		}
		if back, ok := parseHexInt(c.want); !ok || back != c.v {
			t.Errorf("parseHexInt(%s) = %d, %v", c.want, back, ok)
		}
	}
	for _, f := range []float64{-1e300, -2.5, math.Copysign(0, -1), 0, 1e-300, 2.5, 1e300} {
		back, ok := parseHexFloat(hexFloat(f))
		if !ok || back != f {
			t.Errorf("hexFloat(%g) reads back as %g, %v", f, back, ok)
		}
	}
	// -0 (a value written "-0.0") is 0: between the negative numbers and
	// the positive ones.
	if z, n := hexFloat(math.Copysign(0, -1)), hexFloat(0); z != n || z <= hexFloat(-1e-300) {
		t.Errorf("hexFloat(-0) = %s, hexFloat(0) = %s, hexFloat(-1e-300) = %s", z, n, hexFloat(-1e-300))
	}
	if a, b := hexFloat(-2.5), hexFloat(2.5); a >= b {
		t.Errorf("hexFloat(-2.5) = %s sorts after hexFloat(2.5) = %s", a, b)
	}
}

// TestLegacyNegativeZeroKey: a database written before -0 was indexed as 0
// holds the key 0000000000000000 for a quantity of -0 (hexFloat kept its
// sign bit). Such an entry is still 0: value-quantity=0, ge0, le0, ne and
// the unit find it as they find an entry written now (FHIR R4
// search.html#number: -0 and 0 are the same number), and _sort puts it
// between the negative numbers and the positive ones.
func TestLegacyNegativeZeroKey(t *testing.T) {
	unit := []byte("http://unitsofmeasure.org|Cel|Cel")
	legacy := []Entry{{Param: "value-quantity", Key: pfxNum + "0000000000000000", Payload: unit}}
	zero := []Entry{{Param: "value-quantity", Key: pfxNum + hexFloat(0), Payload: unit}}
	for _, c := range []struct {
		query string
		want  bool
	}{
		{"value-quantity=0", true}, {"value-quantity=0.0", true}, {"value-quantity=-0", true},
		{"value-quantity=ge0", true}, {"value-quantity=le0", true}, {"value-quantity=gt-1", true},
		{"value-quantity=lt0", false}, {"value-quantity=gt0", false}, {"value-quantity=ne0", false},
		{"value-quantity=0|http://unitsofmeasure.org|Cel", true}, {"value-quantity=0||g", false},
		{"value-quantity=ap0", true}, {"value-quantity=eb1", true}, {"value-quantity=sa-1", true},
	} {
		v, err := url.ParseQuery(c.query)
		if err != nil {
			t.Fatal(err)
		}
		q, err := reg.Parse("Observation", v, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if got, z := Matches(&q.Clauses[0], legacy), Matches(&q.Clauses[0], zero); got != c.want || z != c.want {
			t.Errorf("%s: the legacy -0 entry matches %v, 0's %v, want %v", c.query, got, z, c.want)
		}
	}
	p, _ := reg.Lookup("Observation", "value-quantity")
	neg := []Entry{{Param: "value-quantity", Key: pfxNum + hexFloat(-1), Payload: unit}}
	for _, desc := range []bool{false, true} {
		l, _ := SortValue(p, legacy, desc)
		z, _ := SortValue(p, zero, desc)
		n, _ := SortValue(p, neg, desc)
		if l != z || l <= n {
			t.Errorf("desc %v: sort value of the legacy -0 entry %q, of 0 %q, of -1 %q", desc, l, z, n)
		}
	}
}
