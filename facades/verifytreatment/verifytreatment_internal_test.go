package verifytreatment

import (
	"testing"
	"time"
)

func TestExpiresAt(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	cases := []struct {
		in   any
		want time.Time
	}{
		{"2026-11-23T11:00:00Z", now.Add(time.Hour)},
		{float64(now.Add(2 * time.Hour).Unix()), now.Add(2 * time.Hour)},
		{"tomorrow", now.Add(5 * time.Minute)},
		{nil, now.Add(5 * time.Minute)},
	}
	for _, c := range cases {
		if got := expiresAt(c.in, now); !got.Equal(c.want) {
			t.Errorf("%v: %s, want %s", c.in, got, c.want)
		}
	}
}

func TestRelationCodes(t *testing.T) {
	want := map[string]string{"self": "SR01", "spouse": "SR02", "child": "SR03", "other": "SR04", "parent": "SR05"}
	for fhir, vt := range want {
		if relation[fhir] != vt {
			t.Errorf("%s -> %s, want %s", fhir, relation[fhir], vt)
		}
	}
}
