package batch

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// exchange is a source payer loaded with one Synthea member, a target with
// the member and their add-payer Task, and the definition between them.
type exchange struct {
	idp     *oidctest.Provider
	src     *sourcePayer
	tg      *targetPayer
	pid     int64
	patient string // the member's Patient id at the source
}

func newExchange(t *testing.T, cfg Config) *exchange {
	t.Helper()
	idp := oidctest.New(t)
	src := newSource(t, idp)
	ids := src.load("Angelic_Mueller")
	if cfg.MDMIdentifierSystem == "-" {
		cfg.MDMIdentifierSystem = ""
	} else if cfg.MDMIdentifierSystem == "" {
		cfg.MDMIdentifierSystem = mdmSystem
	}
	tg := newTarget(t, cfg)
	tg.putResource("Patient", "member-1", memberJSON)
	tg.putResource("Task", "task-1", addPayerTask("task-1", "member-1"))
	return &exchange{idp: idp, src: src, tg: tg, pid: tg.define(src), patient: ids[0]}
}

// token mints the member's tokens at the source payer, for its FHIR API.
func (x *exchange) token(t *testing.T, g oidctest.Grant) (string, string) {
	t.Helper()
	g.ClientID = clientID
	if g.Patient == "" {
		g.Patient = x.patient
	}
	tok, err := x.idp.MintFor([]string{x.src.URL}, g)
	if err != nil {
		t.Fatal(err)
	}
	return tok.AccessToken, tok.RefreshToken
}

func (x *exchange) everything(count int) string {
	return fmt.Sprintf("Patient/%s/$everything?_count=%d", x.patient, count)
}

// TestExchangeEndToEnd pulls a member's $everything over several pages from
// a second p2pserver, with a real OpenID provider's tokens, and checks the
// result the way a payer would.
func TestExchangeEndToEnd(t *testing.T) {
	x := newExchange(t, Config{VersionedReferences: true})
	access, refresh := x.token(t, oidctest.Grant{})
	request := x.everything(40)
	want := x.src.everything(request)
	id := x.tg.startJob(x.pid, jobBody(access, refresh, request, x.patient, "member-1", "task-1"))
	job := x.tg.waitEnd(x.pid, id)
	if job.BatchStatus != Completed {
		t.Fatalf("job ended %s: %s", job.BatchStatus, job.FailureReason)
	}
	base := x.src.URL
	got := x.tg.ingested(base)

	// Every resource arrived, once, under the local id of its source identity.
	if len(got) != len(want) {
		t.Errorf("%d resources ingested, the source served %d", len(got), len(want))
	}
	for _, ref := range want {
		typ, srcID, _ := strings.Cut(ref, "/")
		local := typ + "/" + localID(base, typ, srcID)
		m, ok := got[local]
		if !ok {
			t.Errorf("%s was not ingested as %s", ref, local)
			continue
		}
		if src := m["meta"].(map[string]any)["source"]; src != base+"/"+ref {
			t.Errorf("%s has meta.source %v", local, src)
		}
	}
	// The member's Patient arrives twice: read for MDM, then in $everything,
	// where it is recognized as unchanged.
	if job.Progress.ResourcesTotal != len(want)+1 || job.Progress.ResourcesUnchanged != 1 || job.Progress.VersionsWritten != len(want) {
		t.Errorf("progress counts %d resources, %d unchanged, %d versions; want %d, 1, %d",
			job.Progress.ResourcesTotal, job.Progress.ResourcesUnchanged, job.Progress.VersionsWritten, len(want)+1, len(want))
	}

	// Pages: the member read for MDM, then ceil(n/40) pages of $everything.
	pages := 1 + (len(want)+39)/40
	if job.Progress.PagesFetched != pages || len(job.Progress.ProvenanceIDs) != pages {
		t.Errorf("pages %d, provenance %d; want %d", job.Progress.PagesFetched, len(job.Progress.ProvenanceIDs), pages)
	}

	// References resolve locally: every reference between ingested
	// resources names a local resource, none points at the source.
	unresolved := 0
	for ref, m := range got {
		walkRefs(m, func(r string) (string, bool) {
			switch {
			case strings.HasPrefix(r, "#"), strings.HasPrefix(r, "urn:"):
			case strings.HasPrefix(r, base):
				unresolved++
				t.Errorf("%s still points at the source: %s", ref, r)
			default:
				typ, id, _ := strings.Cut(r, "/")
				if _, err := x.tg.read(typ, id); err != nil {
					unresolved++
					t.Errorf("%s refers to %s, which is not here", ref, r)
				}
			}
			return r, false
		})
		if unresolved > 5 {
			t.Fatal("too many unresolved references")
		}
	}

	// One Provenance per page: its targets are exactly the page's
	// resources, versioned, found with Provenance?target= and _revinclude.
	// A page's resources and its Provenance are written with one
	// lastUpdated (the page's resources are prepared at one time), but
	// for a resource the page kept as an earlier page wrote it, and on
	// the first page (the member's Patient read for MDM), whose
	// Provenance follows the update of our member, stamped when written.
	covered := map[string]bool{}
	for i, pid := range job.Progress.ProvenanceIDs {
		v, err := x.tg.read("Provenance", pid)
		if err != nil {
			t.Fatalf("Provenance %s: %v", pid, err)
		}
		m, _ := decodeMap(v.JSON)
		for _, tg := range m["target"].([]any) {
			ref := tg.(map[string]any)["reference"].(string)
			plain, version, ok := strings.Cut(ref, "/_history/")
			if !ok || version == "" {
				t.Errorf("Provenance %s target %s is not versioned", pid, ref)
			}
			if !covered[plain] && i > 0 {
				typ, id, _ := strings.Cut(plain, "/")
				vid, _ := strconv.ParseInt(version, 10, 64)
				if err := x.tg.st.View(context.Background(), func(tx *store.Tx) error {
					tv, err := tx.VRead(typ, id, vid)
					if err == nil && !tv.LastUpdated.Equal(v.LastUpdated) {
						t.Errorf("%s was written at %s, its page's Provenance %s at %s", ref, tv.LastUpdated, pid, v.LastUpdated)
					}
					return err
				}); err != nil {
					t.Errorf("%s: %v", ref, err)
				}
			}
			covered[plain] = true
		}
		agent := m["agent"].([]any)[0].(map[string]any)
		if code := agent["type"].(map[string]any)["coding"].([]any)[0].(map[string]any)["code"]; code != "transmitter" {
			t.Errorf("agent type %v", code)
		}
		if who := agent["who"].(map[string]any); who["identifier"].(map[string]any)["value"] != "PAYRA" {
			t.Errorf("agent who %v", who)
		}
	}
	for ref := range got {
		if !covered[ref] {
			t.Errorf("%s is the target of no Provenance", ref)
		}
	}
	eob := ""
	for ref := range got {
		if strings.HasPrefix(ref, "ExplanationOfBenefit/") {
			eob = ref
			break
		}
	}
	var bundle map[string]any
	if st, _ := x.tg.call(http.MethodGet, "/fhir/Provenance?target="+url.QueryEscape(eob), "", nil, &bundle); st != 200 || len(listOf(bundle["entry"])) != 1 {
		t.Errorf("Provenance?target=%s: %d %v", eob, st, bundle["total"])
	}
	typ, eobID, _ := strings.Cut(eob, "/")
	if st, _ := x.tg.call(http.MethodGet, "/fhir/"+typ+"?_id="+eobID+"&_revinclude=Provenance:target", "", nil, &bundle); st != 200 || len(listOf(bundle["entry"])) != 2 {
		t.Errorf("_revinclude=Provenance:target: %d, %d entries", st, len(listOf(bundle["entry"])))
	}

	// MDM: the member carries the source's member identifier, a search by
	// it finds the member, and the ingested source Patient is linked.
	srcPatient := "Patient/" + localID(base, "Patient", x.patient)
	if job.MDM == nil || job.MDM.LinkedPatient != srcPatient {
		t.Errorf("mdm report %+v", job.MDM)
	}
	if st, _ := x.tg.call(http.MethodGet, "/fhir/Patient?identifier="+url.QueryEscape(mdmSystem+"|29d755a6-32fa-482e-8fdd-081300209df8"), "", nil, &bundle); st != 200 {
		t.Fatalf("search by identifier: %d", st)
	}
	var found []string
	for _, e := range listOf(bundle["entry"]) {
		found = append(found, e["resource"].(map[string]any)["id"].(string))
	}
	if !slices.Equal(found, []string{"member-1"}) {
		t.Errorf("search by the source member identifier found %v, want the member", found)
	}
	links := got[srcPatient]["link"].([]any)
	if other := links[0].(map[string]any)["other"].(map[string]any)["reference"]; other != "Patient/member-1" {
		t.Errorf("ingested Patient links %v", links)
	}

	// The Task moved to completed, with the outcome in words.
	v, err := x.tg.read("Task", "task-1")
	if err != nil {
		t.Fatal(err)
	}
	task, _ := decodeMap(v.JSON)
	if task["status"] != "completed" || !strings.Contains(fmt.Sprint(task["businessStatus"]), "has been copied") {
		t.Errorf("Task %v %v", task["status"], task["businessStatus"])
	}
	if v.VersionID < 3 {
		t.Errorf("Task at version %d: it should have been moved to in-progress, then completed", v.VersionID)
	}

	// The status report: the seed's fields, times, and no tokens.
	var raw map[string]any
	x.tg.call(http.MethodGet, fmt.Sprintf("/api/oidc_servers/%d/batch_job/%d", x.pid, id), adminToken, nil, &raw)
	for _, f := range []string{"batchJobId", "batchStatus", "startTime", "createTime", "endTime", "lastUpdated", "jobConfigurationName", "taskId"} {
		if raw[f] == nil {
			t.Errorf("status lacks %s", f)
		}
	}
	if s := fmt.Sprint(raw); strings.Contains(s, access[:20]) || strings.Contains(s, refresh) {
		t.Error("the status shows the member's tokens")
	}
	types := make([]string, 0, len(job.Progress.ResourcesWritten))
	for typ := range job.Progress.ResourcesWritten {
		types = append(types, typ)
	}
	sort.Strings(types)
	t.Logf("job %d: %d pages, %d resources (%v), %d versions, %d relinked", id, job.Progress.PagesFetched, job.Progress.ResourcesTotal, types, job.Progress.VersionsWritten, job.Progress.ReferencesRelinked)
}
