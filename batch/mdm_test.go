package batch

import (
	"net/http"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/mdm"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// TestExchangeLinksWithoutIdentifierSystem: without -mdm-identifier-system
// the job adds no identifier and reads no member page, but still links the
// ingested copy of the member's source Patient with the member, both ways,
// when it arrives with the data: what was brought over is the member's
// record (mdm.Linked), whatever the identifier setting.
func TestExchangeLinksWithoutIdentifierSystem(t *testing.T) {
	x := newExchange(t, Config{MDMIdentifierSystem: "-"})
	x.tg.fhir.SetPatientLinks(mdm.Linked)
	access, refresh := x.token(t, oidctest.Grant{})
	request := x.everything(40)
	want := x.src.everything(request)
	job := x.tg.waitEnd(x.pid, x.tg.startJob(x.pid, jobBody(access, refresh, request, x.patient, "member-1", "")))
	if job.BatchStatus != Completed {
		t.Fatalf("job ended %s: %s", job.BatchStatus, job.FailureReason)
	}
	if pages := (len(want) + 39) / 40; job.Progress.PagesFetched != pages {
		t.Errorf("%d pages fetched, want %d (no member read)", job.Progress.PagesFetched, pages)
	}
	ingested := "Patient/" + localID(x.src.URL, "Patient", x.patient)
	if job.MDM == nil || job.MDM.LinkedPatient != ingested || job.MDM.MemberIdentifier != "" {
		t.Errorf("mdm report %+v", job.MDM)
	}
	member, err := x.tg.read("Patient", "member-1")
	if err != nil {
		t.Fatal(err)
	}
	if m := string(member.JSON); !strings.Contains(m, `"link":[{"other":{"reference":"`+ingested+`"},"type":"seealso"}]`) || !strings.Contains(m, `"identifier":[{"system":"urn:payer-b:members","value":"B-1"}],`) {
		t.Errorf("member after the job: %s", m)
	}
	observations := 0
	for _, ref := range want {
		if strings.HasPrefix(ref, "Observation/") {
			observations++
		}
	}
	var bundle map[string]any
	if st, _ := x.tg.call(http.MethodGet, "/fhir/Observation?subject:mdm=Patient/member-1&_summary=count", "", nil, &bundle); st != 200 || bundle["total"] != float64(observations) || observations == 0 {
		t.Errorf("Observation?subject:mdm=Patient/member-1: %d, total %v of %d", st, bundle["total"], observations)
	}
}
