package provenance

import "testing"

// TestReadByIDIsOnlyARead checks which paths below the FHIR base the
// Middleware passes by without looking at the answer: a read of one
// resource ([type]/[id], FHIR R4 http.html#read) only. Every path whose
// answer can be a searchset Bundle — a search, a search by POST, an
// operation such as $everything — must still be looked at, or its
// Provenance would be lost.
func TestReadByIDIsOnlyARead(t *testing.T) {
	rows := []struct {
		path string
		read bool
	}{
		{"/Observation/123", true},
		{"/Patient/0195f3c2-7b1e-7c3a-9d4e-0123456789ab", true},
		{"/Patient/a.b-c/", true},
		{"/Observation", false},
		{"/Observation/", false},
		{"/Observation/_search", false},
		{"/Patient/123/$everything", false},
		{"/Patient/$everything", false},
		{"/Patient/123/_history", false},
		{"/Patient/123/_history/2", false},
		{"/$export", false},
		{"/_history", false},
		{"/", false},
		{"", false},
		{"/fhir/Observation/123", false}, // not a path below the base
	}
	for _, r := range rows {
		if got := readByID(r.path); got != r.read {
			t.Errorf("readByID(%q) = %v, want %v", r.path, got, r.read)
		}
	}
}
