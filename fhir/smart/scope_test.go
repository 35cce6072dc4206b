package smart

import (
	"strings"
	"testing"
)

func TestParseScopeV1AndV2(t *testing.T) {
	t.Parallel()
	cases := []struct {
		raw   string
		level string
		typ   string
		perms Perm
		v2    bool
		err   string // substring of the error; "" for none
	}{
		{"patient/*.read", LevelPatient, "*", Read | Search, false, ""},
		{"patient/Observation.read", LevelPatient, "Observation", Read | Search, false, ""},
		{"patient/Task.write", LevelPatient, "Task", Create | Update | Delete, false, ""},
		{"user/*.*", LevelUser, "*", PermAll, false, ""},
		{"system/*.read", LevelSystem, "*", Read | Search, false, ""},
		{"patient/Observation.rs", LevelPatient, "Observation", Read | Search, true, ""},
		{"patient/Observation.r", LevelPatient, "Observation", Read, true, ""},
		{"patient/Observation.s", LevelPatient, "Observation", Search, true, ""},
		{"system/*.cruds", LevelSystem, "*", PermAll, true, ""},
		{"user/Task.cu", LevelUser, "Task", Create | Update, true, ""},
		{"patient/Task.cud", LevelPatient, "Task", Create | Update | Delete, true, ""},
		{"patient/*.d", LevelPatient, "*", Delete, true, ""},
		// Refused.
		{"patient/Observation.sr", "", "", 0, false, "in that order"},
		{"patient/Observation.rr", "", "", 0, false, "in that order"},
		{"patient/Observation.readwrite", "", "", 0, false, "neither read"},
		{"patient/Observation.", "", "", 0, false, "not of the form"},
		{"patient/.read", "", "", 0, false, "not of the form"},
		{"patient/Observatoin.read", "", "", 0, false, "not a FHIR R4 resource type"},
		{"patient/Observation.rs?category=laboratory", "", "", 0, false, "search constraints"},
		{"admin/*.read", "", "", 0, false, "not patient, user or system"},
	}
	for _, c := range cases {
		sc, err := ParseScope(c.raw)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: error %v, want one with %q", c.raw, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.raw, err)
			continue
		}
		if sc.Level != c.level || sc.Type != c.typ || sc.Perms != c.perms || sc.V2 != c.v2 {
			t.Errorf("%s: got %s/%s.%s v2=%v, want %s/%s.%s v2=%v", c.raw, sc.Level, sc.Type, sc.Perms, sc.V2, c.level, c.typ, c.perms, c.v2)
		}
	}
}

func TestParseScopesSortsResourceOtherAndIgnored(t *testing.T) {
	t.Parallel()
	ss := ParseScopes("openid fhirUser launch/patient offline_access patient/*.read patient/Observation.rs?code=x  system/Foo.read user/Task.cu")
	if len(ss.Resource) != 2 || ss.Resource[0].Raw != "patient/*.read" || ss.Resource[1].Raw != "user/Task.cu" {
		t.Errorf("resource scopes %+v", ss.Resource)
	}
	if strings.Join(ss.Other, " ") != "openid fhirUser launch/patient offline_access" {
		t.Errorf("other scopes %v", ss.Other)
	}
	if len(ss.Ignored) != 2 || ss.Ignored[0].Scope != "patient/Observation.rs?code=x" || ss.Ignored[1].Scope != "system/Foo.read" {
		t.Errorf("ignored %+v", ss.Ignored)
	}
	patient := []string{LevelPatient}
	for _, c := range []struct {
		levels []string
		typ    string
		need   Perm
		want   bool
	}{
		{patient, "Observation", Read, true},
		{patient, "Observation", Search, true},
		{patient, "Observation", Read | Search, true},
		{patient, "Observation", Create, false},
		{[]string{LevelUser}, "Observation", Read, false},
		{[]string{LevelUser}, "Task", Create, true},
		{[]string{LevelUser}, "Task", Create | Update, true},
		{[]string{LevelUser}, "Task", Delete, false},
		{[]string{LevelSystem}, "Patient", Read, false},
	} {
		if got := ss.Allows(c.levels, c.typ, c.need); got != c.want {
			t.Errorf("Allows(%v, %s, %s) = %v", c.levels, c.typ, c.need, got)
		}
	}
	if !ss.AllowsAny([]string{LevelUser}, "Task", Delete|Update) || ss.AllowsAny([]string{LevelUser}, "Task", Read|Search) {
		t.Error("AllowsAny")
	}
}

func TestPermString(t *testing.T) {
	t.Parallel()
	for p, want := range map[Perm]string{PermAll: "cruds", Read | Search: "rs", Create | Delete: "cd", 0: ""} {
		if p.String() != want {
			t.Errorf("%d: %q, want %q", p, p.String(), want)
		}
	}
}

func TestInteractionNeeds(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		method, path string
		typ          string
		need         Perm
	}{
		{"GET", "/Observation", "Observation", Search},
		{"POST", "/Observation/_search", "Observation", Search},
		{"GET", "/Observation/1", "Observation", Read},
		{"GET", "/Observation/1/_history", "Observation", Read},
		{"GET", "/Observation/1/_history/2", "Observation", Read},
		{"GET", "/Observation/_history", "Observation", Search}, // SMART App Launch 2: type history is s
		{"POST", "/Task", "Task", Create},
		{"PUT", "/Task/1", "Task", Update},
		{"PUT", "/Task", "Task", Update},
		{"DELETE", "/Task/1", "Task", Delete},
		{"DELETE", "/Task", "Task", Delete},
		{"GET", "/Patient/1/$everything", "", 0},
		{"POST", "/Patient/$member-match", "", 0},
		{"POST", "/", "", 0},
		{"GET", "/_history", "", 0},
		{"GET", "/metadata", "", 0},
		{"GET", "/NotAType/1", "", 0},
	} {
		typ, need := interaction(c.method, c.path)
		if typ != c.typ || need != c.need {
			t.Errorf("%s %s: %s %s, want %s %s", c.method, c.path, typ, need, c.typ, c.need)
		}
	}
}
