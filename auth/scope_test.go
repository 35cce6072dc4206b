package auth_test

import (
	"slices"
	"testing"

	"github.com/p2pserver/p2pserver/auth"
)

// TestIntersectScopes: the scope granted is what was asked within what
// was registered (SMART App Launch 2, Backend Services, "Evaluate
// Requested Access"), in v1 or v2 syntax as asked; anything that is not a
// system/ resource scope grants nothing.
func TestIntersectScopes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		asked      string
		registered []string
		granted    []string
		dropped    []string
	}{
		{"system/*.rs", []string{"system/*.rs"}, []string{"system/*.rs"}, nil},
		{"system/*.read", []string{"system/*.rs"}, []string{"system/*.read"}, nil},
		{"system/Observation.rs", []string{"system/*.read"}, []string{"system/Observation.rs"}, nil},
		{"system/*.rs", []string{"system/Observation.rs", "system/Patient.r"}, []string{"system/Observation.rs", "system/Patient.r"}, nil},
		{"system/*.read", []string{"system/Observation.rs"}, []string{"system/Observation.read"}, nil},
		{"system/*.cruds", []string{"system/*.rs"}, []string{"system/*.rs"}, nil},
		{"system/*.*", []string{"system/*.read"}, []string{"system/*.read"}, nil},
		{"system/*.write", []string{"system/*.rs"}, nil, []string{"system/*.write"}},
		{"system/*.*", []string{"system/*.cud"}, []string{"system/*.write"}, nil},
		{"system/Condition.rs", []string{"system/Observation.rs"}, nil, []string{"system/Condition.rs"}},
		{"system/Observation.s system/Observation.r", []string{"system/Observation.rs"}, []string{"system/Observation.s", "system/Observation.r"}, nil},
		{"patient/*.read user/*.rs openid launch system/Nope.rs system/*.rs?category=x", []string{"system/*.rs"}, nil,
			[]string{"patient/*.read", "user/*.rs", "openid", "launch", "system/Nope.rs", "system/*.rs?category=x"}},
		{"system/*.rs system/*.rs", []string{"system/*.rs"}, []string{"system/*.rs"}, nil},
	}
	for _, c := range cases {
		g, d := auth.Intersect(c.asked, c.registered)
		if !slices.Equal(g, c.granted) || !slices.Equal(d, c.dropped) {
			t.Errorf("Intersect(%q, %v) = %v, %v; want %v, %v", c.asked, c.registered, g, d, c.granted, c.dropped)
		}
	}
}
