package spec

// Hand-written matchers for the patterns of the common primitive types.
// Validation spends most of its time matching primitives, and these are
// several times faster than the equivalent regexps. Each is keyed by the
// exact pattern text of the schema, so a changed schema falls back to the
// regexp; TestFastMatchersAgreeWithPatterns checks each against its regexp
// (Go syntax: \s is [\t\n\f\r ]) on tricky and on random values.
var fastMatchers = map[string]func(string) bool{
	`^[ \r\n\t\S]+$`:          isString,
	`^\S*$`:                   isURI,
	`^[^\s]+(\s[^\s]+)*$`:     isCode,
	`^[A-Za-z0-9\-\.]{1,64}$`: isID,
	`^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?$`:                                                                                                         isDate,
	`^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?$`: isDateTime,
	`^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$`:          isInstant,
	`^([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?$`: isTime,
	`^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$`:           isDecimal,
	`^-?([0]|([1-9][0-9]*))$`:                                    isInteger,
	`^[1-9][0-9]*$`:                                              isPositiveInt,
	`^[0]|([1-9][0-9]*)$`:                                        isUnsignedInt,
}

// fastMatcher returns the hand-written matcher for pattern, or nil.
func fastMatcher(pattern string) func(string) bool { return fastMatchers[pattern] }

// isSpace is Go regexp's \s.
func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' }

// isString: any non-empty text without a form feed (the only \s character
// the class leaves out).
func isString(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] == '\f' {
			return false
		}
	}
	return true
}

// isURI: no white space.
func isURI(s string) bool {
	for i := 0; i < len(s); i++ {
		if isSpace(s[i]) {
			return false
		}
	}
	return true
}

// isCode: words separated by single white space characters.
func isCode(s string) bool {
	if s == "" || isSpace(s[0]) || isSpace(s[len(s)-1]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if isSpace(s[i]) && isSpace(s[i-1]) {
			return false
		}
	}
	return true
}

func isID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// twoDigits returns the number s[i:i+2] spells, or -1.
func twoDigits(s string, i int) int {
	if i+2 > len(s) || !isDigit(s[i]) || !isDigit(s[i+1]) {
		return -1
	}
	return int(s[i]-'0')*10 + int(s[i+1]-'0')
}

// year checks a four-digit year other than 0000 at the start of s.
func year(s string) bool {
	return len(s) >= 4 && isDigit(s[0]) && isDigit(s[1]) && isDigit(s[2]) && isDigit(s[3]) && s[:4] != "0000"
}

// date parses YYYY[-MM[-DD]] at the start of s and returns the length of
// the date and how many parts (1-3) it has, or -1 parts.
func date(s string, full bool) (n, parts int) {
	if !year(s) {
		return 0, -1
	}
	n, parts = 4, 1
	if n < len(s) && s[n] == '-' {
		if m := twoDigits(s, n+1); m >= 1 && m <= 12 {
			n, parts = n+3, 2
		} else {
			return 0, -1
		}
		if n < len(s) && s[n] == '-' {
			if d := twoDigits(s, n+1); d >= 1 && d <= 31 {
				n, parts = n+3, 3
			} else {
				return 0, -1
			}
		}
	}
	if full && parts != 3 {
		return 0, -1
	}
	return n, parts
}

// clock parses hh:mm:ss[.fff] at s[i:] and returns the index after it, or -1.
func clock(s string, i int) int {
	if h := twoDigits(s, i); h < 0 || h > 23 {
		return -1
	}
	if i+2 >= len(s) || s[i+2] != ':' {
		return -1
	}
	if m := twoDigits(s, i+3); m < 0 || m > 59 {
		return -1
	}
	if i+5 >= len(s) || s[i+5] != ':' {
		return -1
	}
	if sec := twoDigits(s, i+6); sec < 0 || sec > 60 {
		return -1
	}
	i += 8
	if i < len(s) && s[i] == '.' {
		j := i + 1
		for j < len(s) && isDigit(s[j]) {
			j++
		}
		if j == i+1 {
			return -1
		}
		i = j
	}
	return i
}

// zone checks that s[i:] is exactly a time zone: Z, or ±hh:mm up to 14:00.
func zone(s string, i int) bool {
	if i < len(s) && s[i] == 'Z' {
		return i+1 == len(s)
	}
	if i+6 != len(s) || (s[i] != '+' && s[i] != '-') || s[i+3] != ':' {
		return false
	}
	h, m := twoDigits(s, i+1), twoDigits(s, i+4)
	if h < 0 || m < 0 || m > 59 {
		return false
	}
	return h <= 13 || h == 14 && m == 0
}

func isDate(s string) bool {
	n, parts := date(s, false)
	return parts > 0 && n == len(s)
}

func isDateTime(s string) bool {
	n, parts := date(s, false)
	if parts < 0 {
		return false
	}
	if n == len(s) {
		return true
	}
	if parts != 3 || s[n] != 'T' {
		return false
	}
	i := clock(s, n+1)
	return i > 0 && zone(s, i)
}

func isInstant(s string) bool {
	n, parts := date(s, true)
	if parts < 0 || n == len(s) || s[n] != 'T' {
		return false
	}
	i := clock(s, n+1)
	return i > 0 && zone(s, i)
}

func isTime(s string) bool { return clock(s, 0) == len(s) }

// digits returns the index after the run of digits at s[i:].
func digits(s string, i int) int {
	for i < len(s) && isDigit(s[i]) {
		i++
	}
	return i
}

// unsigned checks an integer without sign or leading zeros at s[i:] and
// returns the index after it, or -1.
func unsigned(s string, i int) int {
	if i >= len(s) || !isDigit(s[i]) {
		return -1
	}
	if s[i] == '0' {
		return i + 1
	}
	return digits(s, i)
}

func isDecimal(s string) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	if i = unsigned(s, i); i < 0 {
		return false
	}
	if i < len(s) && s[i] == '.' {
		j := digits(s, i+1)
		if j == i+1 {
			return false
		}
		i = j
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		j := digits(s, i)
		if j == i {
			return false
		}
		i = j
	}
	return i == len(s)
}

func isInteger(s string) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	return unsigned(s, i) == len(s)
}

func isPositiveInt(s string) bool {
	return s != "" && s[0] != '0' && unsigned(s, 0) == len(s)
}

func isUnsignedInt(s string) bool { return unsigned(s, 0) == len(s) }
