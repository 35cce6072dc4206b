package batch

import (
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// TestIngestedUnderDigestIDsIsFoundAgain: what was ingested before local
// ids kept the source's id (under a digest of the source identity) is
// found again under that id. A job that brings it again writes no copy
// under the new id, and what it brings for the first time, under new ids,
// refers to it by its digest id. Not parallel: the first job runs with
// digestIDsOnly, as ingestion did before.
func TestIngestedUnderDigestIDsIsFoundAgain(t *testing.T) {
	x := newExchange(t, Config{})
	base := x.src.URL
	access, refresh := x.token(t, oidctest.Grant{})

	// Before: the member's Patient (read for MDM) and their Encounters,
	// under digest ids.
	digestIDsOnly = true
	id := x.tg.startJob(x.pid, jobBody(access, refresh, "Encounter?patient="+x.patient, x.patient, "member-1", ""))
	job := x.tg.waitEnd(x.pid, id)
	digestIDsOnly = false
	if job.BatchStatus != Completed {
		t.Fatalf("the first job ended %s: %s", job.BatchStatus, job.FailureReason)
	}
	before := x.tg.ingested(base)
	if before["Patient/"+digestID(base, "Patient", x.patient)] == nil || len(before) < 2 {
		t.Fatalf("the first job ingested %d resources, not the member's Patient and Encounters under digest ids", len(before))
	}

	// Now: the member's whole record.
	request := x.everything(40)
	want := x.src.everything(request)
	id = x.tg.startJob(x.pid, jobBody(access, refresh, request, x.patient, "member-1", ""))
	job = x.tg.waitEnd(x.pid, id)
	if job.BatchStatus != Completed {
		t.Fatalf("the second job ended %s: %s", job.BatchStatus, job.FailureReason)
	}
	got := x.tg.ingested(base)
	if len(got) != len(want) {
		t.Errorf("%d resources ingested from the source, which served %d: a resource ingested before was copied again", len(got), len(want))
	}
	for _, ref := range want {
		typ, srcID, _ := strings.Cut(ref, "/")
		old, neu := typ+"/"+digestID(base, typ, srcID), typ+"/"+localID(base, typ, srcID)
		switch {
		case before[old] != nil && got[old] == nil:
			t.Errorf("%s, ingested before as %s, is not there any more", ref, old)
		case before[old] != nil && got[neu] != nil:
			t.Errorf("%s, ingested before as %s, was copied as %s", ref, old, neu)
		case before[old] == nil && got[neu] == nil:
			t.Errorf("%s was not ingested as %s", ref, neu)
		}
	}
	// Every reference between ingested resources names one that is here:
	// the new ones name those ingested before by their digest ids.
	toOld := 0
	for ref, m := range got {
		walkRefs(m, func(r string) (string, bool) {
			typ, rid, ok := strings.Cut(r, "/")
			if !ok || strings.HasPrefix(r, "#") || strings.Contains(r, ":") {
				return r, false
			}
			if got[r] == nil {
				if _, err := x.tg.read(typ, rid); err != nil {
					t.Errorf("%s refers to %s, which is not here", ref, r)
				}
			}
			if before[r] != nil && before[ref] == nil {
				toOld++
			}
			return r, false
		})
	}
	if toOld == 0 {
		t.Error("no resource ingested now refers to one ingested before")
	}
}
