package spec

import (
	"math/rand/v2"
	"strings"
	"testing"
)

// Every primitive of the model with a fast matcher must accept exactly what
// its (anchored) schema pattern accepts.
func TestFastMatchersAgreeWithPatterns(t *testing.T) {
	t.Parallel()
	tricky := []string{
		"", " ", "a", "a b", "a  b", " a", "a ", "a\tb", "a\fb", "\f", "é", "a\u00a0b", "\xff",
		"0", "00", "01", "1", "-0", "-1", "-01", "+1", "1.", "1.0", ".5", "1e5", "1E+05", "1e", "1e-", "-0.0e-0",
		"2147483647", "0000", "0001", "1000", "2020", "2020-", "2020-00", "2020-01", "2020-13", "2020-12-31",
		"2020-12-32", "2020-02-30", "2020-1-01", "2020-01-01T", "2020-01-01T10:00", "2020-01-01T10:00:00",
		"2020-01-01T10:00:00Z", "2020-01-01T24:00:00Z", "2020-01-01T23:59:60Z", "2020-01-01T23:59:61Z",
		"2020-01-01T10:00:00.Z", "2020-01-01T10:00:00.123Z", "2020-01-01T10:00:00+14:00",
		"2020-01-01T10:00:00+14:01", "2020-01-01T10:00:00-13:59", "2020-01-01T10:00:00+1:00",
		"2020-01-01T10:00:00ZZ", "2020-01T10:00:00Z", "10:00:00", "10:00", "24:00:00", "10:00:00.5",
		"10:00:00.", "abc-DEF.123", strings.Repeat("a", 64), strings.Repeat("a", 65), "a_b", "http://x y",
		"urn:uuid:0", "true",
	}
	alphabets := []string{"0123456789-", "0123456789-:TZ+.", "0129-.eE+", "ab \t\n\f\r", "aZ9-._ é"}
	rng := rand.New(rand.NewPCG(1, 2))
	var random []string
	for range 40000 {
		alpha := alphabets[rng.IntN(len(alphabets))]
		var b strings.Builder
		for range rng.IntN(30) {
			b.WriteByte(alpha[rng.IntN(len(alpha))])
		}
		random = append(random, b.String())
	}
	// Random strings rarely spell a valid date; mutate valid ones too.
	for _, base := range []string{"2020-12-31T23:59:60.123+14:00", "1999-01-01", "-10.5e+3", "12:30:45.1"} {
		for range 5000 {
			b := []byte(base)
			i := rng.IntN(len(b))
			b[i] = "0123456789-:TZ+.e"[rng.IntN(17)]
			random = append(random, string(b[:rng.IntN(len(b)+1)]))
		}
	}
	used := map[string]bool{}
	for name, typ := range R4().types {
		p := typ.prim
		if p == nil || p.re == nil || fastMatchers[p.pattern] == nil {
			continue
		}
		used[p.pattern] = true
		for _, s := range append(tricky, random...) {
			if got, want := p.match(s), p.re.MatchString(s); got != want {
				t.Errorf("%s: fast matcher says %t for %q, the pattern says %t", name, got, s, want)
			}
		}
	}
	for pattern := range fastMatchers {
		if !used[pattern] {
			t.Errorf("no primitive has the pattern %s any more: the schema changed", pattern)
		}
	}
}
