package main

import (
	"math"
	"testing"
)

// TestWorseIsTheWorseWayRound: -compare's factor is above 1 exactly when
// the figure is worse than bbolt's, for rates (higher is better) and for
// latencies and sizes (lower is better).
func TestWorseIsTheWorseWayRound(t *testing.T) {
	for _, c := range []struct {
		name    string
		base, g float64
		lower   bool
		want    float64
	}{
		{"rate half", 1000, 500, false, 2},
		{"rate double", 1000, 2000, false, 0.5},
		{"latency double", 1.5, 3, true, 2},
		{"latency half", 2, 1, true, 0.5},
		{"size same", 1681, 1681, true, 1},
		{"base zero", 0, 5, true, 0},
		{"figure zero", 5, 0, false, 0},
	} {
		got := worse(figure{v: c.base, lower: c.lower}, figure{v: c.g, lower: c.lower})
		if math.Abs(got-c.want) > 1e-9 {
			t.Errorf("%s: worse(%v, %v) = %v, want %v", c.name, c.base, c.g, got, c.want)
		}
	}
}

// TestPickAlternatesServers: with two processes every other call goes to
// each; with one, all go to it.
func TestPickAlternatesServers(t *testing.T) {
	l := &loader{base: "http://a/fhir", bases: []string{"http://a/fhir", "http://b/fhir"}}
	n := map[string]int{}
	for range 10 {
		n[l.pick()]++
	}
	if n["http://a/fhir"] != 5 || n["http://b/fhir"] != 5 {
		t.Errorf("two servers: %v, want 5 each", n)
	}
	one := &loader{base: "http://a/fhir", bases: []string{"http://a/fhir"}}
	for range 3 {
		if got := one.pick(); got != "http://a/fhir" {
			t.Errorf("one server: %s", got)
		}
	}
}
