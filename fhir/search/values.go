package search

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// Key prefixes inside one parameter's index. Each index entry key is one of
// these prefixes, a value encoding, then (added by the store) 0x00 and the id.
const (
	pfxCode     = "c\x01" // token: code alone
	pfxSysCode  = "s\x01" // token: system|code
	pfxText     = "t\x01" // token: display/text, normalized
	pfxNorm     = "n\x01" // string: normalized
	pfxExact    = "e\x01" // string: as written
	pfxRef      = "r\x01" // reference
	pfxDate     = "d\x01" // date: hex low bound; payload: high bound
	pfxNum      = "q\x01" // number/quantity: hex sortable float; payload: system|code|unit
	pfxURI      = "u\x01" // uri
	maxKeyBytes = 480
)

// Normalize folds a string for FHIR string search: lower case, accents
// removed, runs of white space collapsed.
func Normalize(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	var b strings.Builder
	b.Grow(len(s))
	space := false
	write := func(r rune) {
		if unicode.IsSpace(r) {
			if !space && b.Len() > 0 {
				b.WriteByte(' ')
			}
			space = true
			return
		}
		if r == 0 {
			return
		}
		space = false
		b.WriteRune(unicode.ToLower(r))
	}
	if ascii {
		for i := 0; i < len(s); i++ {
			write(rune(s[i]))
		}
	} else {
		for _, r := range norm.NFD.String(s) {
			if unicode.Is(unicode.Mn, r) {
				continue
			}
			write(r)
		}
	}
	return strings.TrimRight(b.String(), " ")
}

// Values longer than maxKeyBytes cannot be index keys as they are. Such a
// value's key is its first clipBytes bytes (cut on a rune boundary), 0x01
// and digestHex hex digits of the SHA-256 of the whole value, and the whole
// value is the entry's payload. So every stored value stays findable by its
// full value (the key of a query value is computed the same way), prefix
// searches still run on the key order, and every match is verified against
// the whole value: an exact search never matches a mere prefix.
const (
	digestHex = 32
	clipBytes = maxKeyBytes - 1 - digestHex
)

// clipTo cuts s to at most n bytes on a rune boundary.
func clipTo(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// longKey is the key of a value longer than maxKeyBytes under prefix pfx.
func longKey(pfx, v string) string {
	sum := sha256.Sum256([]byte(v))
	return pfx + clipTo(v, clipBytes) + "\x01" + hex.EncodeToString(sum[:digestHex/2])
}

// valueEntry is the index entry of value v (a string, token, reference or
// uri encoding) under prefix pfx.
func valueEntry(pfx, v string) Entry {
	if len(v) <= maxKeyBytes {
		return Entry{Key: pfx + v}
	}
	return Entry{Key: longKey(pfx, v), Payload: []byte(v)}
}

// entryValue is the whole value an entry made by valueEntry holds.
func entryValue(pfx, key string, payload []byte) string {
	if len(payload) > 0 {
		return string(payload)
	}
	return key[len(pfx):]
}

// exactValue is the range of the entries whose whole value is v.
func exactValue(pfx, v string) Range {
	if len(v) <= maxKeyBytes {
		r := exact(pfx + v)
		// A short key can only equal a long value's key if crafted to.
		r.Match = func(_ string, payload []byte) bool { return len(payload) == 0 }
		r.exact = true
		return r
	}
	r := exact(longKey(pfx, v))
	r.Match = func(_ string, payload []byte) bool { return string(payload) == v }
	r.exact = true
	return r
}

// prefixValue is the range of the entries whose whole value starts with p.
func prefixValue(pfx, p string) Range {
	c := clipTo(p, clipBytes)
	r := prefix(pfx + c)
	if len(c) < len(p) {
		r.Match = func(key string, payload []byte) bool { return strings.HasPrefix(entryValue(pfx, key, payload), p) }
	}
	return r
}

// MayBeClipped reports whether an index key written before long values got
// their own key form (when they were cut to maxKeyBytes, with no payload)
// may hold a cut value; the store re-indexes resources with such keys.
func MayBeClipped(key string, payload []byte) bool {
	if len(key) < len(pfxCode)+maxKeyBytes-utf8.UTFMax || len(payload) > 0 {
		return false
	}
	switch key[:len(pfxCode)] {
	case pfxCode, pfxSysCode, pfxText, pfxNorm, pfxExact, pfxRef, pfxURI:
		return true
	}
	return false
}

func stripNUL(s string) string {
	if strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "")
}

// hexInt encodes v so that byte order equals numeric order.
func hexInt(v int64) string { return hex16(uint64(v) ^ (1 << 63)) }

// hex16 is u in 16 lower-case hex digits (fmt's %016x, without its cost:
// every date and number entry has one).
func hex16(u uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], u)
	return hex.EncodeToString(b[:])
}

// parseHexInt decodes hexInt.
func parseHexInt(s string) (int64, bool) {
	u, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, false
	}
	return int64(u ^ (1 << 63)), true
}

// hexFloat encodes f so that byte order equals numeric order. -0 is 0
// (its sign bit would put it below every negative number).
func hexFloat(f float64) string {
	if f == 0 {
		f = 0
	}
	bits := math.Float64bits(f)
	if f >= 0 {
		bits ^= 1 << 63
	} else {
		bits = ^bits
	}
	return hex16(bits)
}

// parseHexFloat decodes hexFloat. The key of all zeros, which no number
// is written as now, is -0 as hexFloat wrote it before (with its sign
// bit): a database of then still has it, and it is 0 too.
func parseHexFloat(s string) (float64, bool) {
	u, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, false
	}
	if u == 0 {
		return 0, true
	}
	if u&(1<<63) != 0 {
		u ^= 1 << 63
	} else {
		u = ^u
	}
	return math.Float64frombits(u), true
}

// mergePayload returns the payload of the one index entry a parameter
// keeps for two of a resource's items with the same key (an index holds
// one entry per key and resource) but different payloads, so that a search
// matches on either item (search.html#search: a parameter matches when any
// of its values does): under a date key the upper bounds, 8 bytes each,
// one after the other (Timing events 2015 and 2015-01-01T00:00:00Z start
// alike and end apart); under a number key the units, NUL between them (a
// component's 120 mm[Hg] and 120 /min). Any other key keeps have (its
// payload is the value the key names). The result never shares add's or
// a changed have's memory.
func mergePayload(key string, have, add []byte) []byte {
	switch {
	case bytes.Equal(have, add):
		return have
	case strings.HasPrefix(key, pfxDate):
		for p := add; len(p) >= 8; p = p[8:] {
			if !slices.ContainsFunc(dateBounds(have), func(b []byte) bool { return bytes.Equal(b, p[:8]) }) {
				have = append(slices.Clip(have), p[:8]...)
			}
		}
	case strings.HasPrefix(key, pfxNum) && len(have) > 0 && len(add) > 0:
		for _, u := range bytes.Split(add, []byte{0}) {
			if !slices.ContainsFunc(bytes.Split(have, []byte{0}), func(h []byte) bool { return bytes.Equal(h, u) }) {
				have = append(append(slices.Clip(have), 0), u...)
			}
		}
	}
	return have
}

// dateBounds splits a date entry's payload into its upper bounds (see
// mergePayload).
func dateBounds(p []byte) [][]byte {
	var out [][]byte
	for ; len(p) >= 8; p = p[8:] {
		out = append(out, p[:8])
	}
	return out
}

func int64Bytes(v int64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, uint64(v))
	return b
}

func bytesInt64(b []byte) int64 {
	if len(b) < 8 {
		return math.MaxInt64
	}
	return int64(binary.BigEndian.Uint64(b))
}

// Date bounds are in milliseconds since the Unix epoch, both inclusive.
const (
	minDate = math.MinInt64 / 2
	maxDate = math.MaxInt64 / 2
)

// DateRange parses a FHIR date, dateTime or instant (any precision, with or
// without a zone; no zone means UTC) into the inclusive range of
// milliseconds it denotes.
func DateRange(s string) (lo, hi int64, err error) {
	t, end, err := dateSpan(s)
	if err != nil {
		return 0, 0, err
	}
	// A range finer than a millisecond is the millisecond it is in.
	return t.UnixMilli(), max(end.Add(-time.Nanosecond).UnixMilli(), t.UnixMilli()), nil
}

// dateRangeMicro is DateRange in Unix microseconds, precise to the
// microsecond (finer values are the microsecond they are in).
func dateRangeMicro(s string) (lo, hi int64, err error) {
	t, end, err := dateSpan(s)
	if err != nil {
		return 0, 0, err
	}
	return t.UnixMicro(), max(end.Add(-time.Nanosecond).UnixMicro(), t.UnixMicro()), nil
}

// dateSpan parses s as DateRange does into the instant it starts at and
// the one after it (its precision: a year, ..., a nanosecond).
func dateSpan(s string) (start, end time.Time, err error) {
	s = strings.TrimSpace(s)
	layouts := []struct {
		layout string
		step   func(time.Time) time.Time
	}{
		{"2006", func(t time.Time) time.Time { return t.AddDate(1, 0, 0) }},
		{"2006-01", func(t time.Time) time.Time { return t.AddDate(0, 1, 0) }},
		{"2006-01-02", func(t time.Time) time.Time { return t.AddDate(0, 0, 1) }},
	}
	for _, l := range layouts {
		if len(s) != len(l.layout) {
			continue
		}
		t, perr := time.Parse(l.layout, s)
		if perr != nil {
			return time.Time{}, time.Time{}, fmt.Errorf("%q is not a valid date", s)
		}
		return t, l.step(t), nil
	}
	if len(s) < 16 || s[10] != 'T' {
		return time.Time{}, time.Time{}, fmt.Errorf("%q is not a valid date or dateTime", s)
	}
	// Split the zone off so that precision is read from the clock part.
	clock, zone := s[11:], ""
	if i := strings.IndexAny(clock, "Z+-"); i >= 0 {
		clock, zone = clock[:i], clock[i:]
	}
	if zone == "" {
		zone = "Z"
	}
	var layout string
	var step time.Duration
	switch {
	case len(clock) == 5:
		layout, step = "15:04", time.Minute
	case len(clock) == 8:
		layout, step = "15:04:05", time.Second
	case len(clock) > 9 && clock[8] == '.':
		frac := len(clock) - 9
		layout = "15:04:05." + strings.Repeat("0", frac)
		step = time.Second
		for range frac {
			step /= 10
		}
	default:
		return time.Time{}, time.Time{}, fmt.Errorf("%q is not a valid dateTime", s)
	}
	zl := "Z07:00"
	t, perr := time.Parse("2006-01-02T"+layout+zl, s[:11]+clock+zone)
	if perr != nil {
		return time.Time{}, time.Time{}, fmt.Errorf("%q is not a valid dateTime", s)
	}
	return t, t.Add(step), nil
}

// numberRange returns the value and the implicit-precision range of a
// decimal as written: "100" is [99.5, 100.5), "1.50" is [1.495, 1.505).
func numberRange(s string) (v, lo, hi float64, err error) {
	v, err = strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, 0, 0, fmt.Errorf("%q is not a number", s)
	}
	mant := strings.ToLower(s)
	exp := 0
	if i := strings.IndexByte(mant, 'e'); i >= 0 {
		exp, _ = strconv.Atoi(mant[i+1:])
		mant = mant[:i]
	}
	decimals := 0
	if i := strings.IndexByte(mant, '.'); i >= 0 {
		decimals = len(mant) - i - 1
	}
	half := 0.5 * math.Pow(10, float64(exp-decimals))
	return v, v - half, v + half, nil
}
