package fhir

import (
	"regexp"
	"strings"
	"testing"
)

// TestValidID checks the rule of FHIR R4 datatypes.html#id — 1 to 64 of
// A-Z a-z 0-9 - . — row by row, and against the rule written as the
// specification's regular expression on every byte and on the length
// boundaries.
func TestValidID(t *testing.T) {
	spec := regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)
	rows := []struct {
		id   string
		want bool
	}{
		{"a", true},
		{"Patient-1.2", true},
		{"0195f3c2-7b1e-7c3a-9d4e-0123456789ab", true},
		{strings.Repeat("x", 64), true},
		{strings.Repeat("x", 65), false},
		{"", false},
		{"no pe", false},
		{"a/b", false},
		{"a_b", false},
		{"é", false},
		{"a\n", false},
		{"\na", false},
		{"a\x00", false},
	}
	for _, r := range rows {
		if got := validID(r.id); got != r.want {
			t.Errorf("validID(%q) = %v, want %v", r.id, got, r.want)
		}
		if got := spec.MatchString(r.id); got != r.want {
			t.Errorf("the row %q disagrees with the specification's pattern", r.id)
		}
	}
	for c := 0; c < 256; c++ {
		id := "a" + string([]byte{byte(c)})
		if got, want := validID(id), spec.MatchString(id); got != want {
			t.Errorf("validID(%q) = %v, the specification's pattern says %v", id, got, want)
		}
	}
}
