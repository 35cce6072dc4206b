package healthie_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/facades/healthie"
	"github.com/p2pserver/p2pserver/facades/healthie/healthietest"
	"github.com/p2pserver/p2pserver/fhir/store"
)

func localIDs(hids []string) []string {
	out := make([]string, len(hids))
	for i, h := range hids {
		out[i] = healthie.IDPrefix + h
	}
	sort.Strings(out)
	return out
}

func TestSyncedResourcesAreSearchableLocally(t *testing.T) {
	t.Parallel()
	e := newEnv(t, patients(12), syncMode())
	rep, err := e.h.Syncer().SyncAll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// 12 patients, appointments, policies and claims; 2 practitioners and
	// roles; 2 locations; 1 organization.
	if want := 4*12 + 2*2 + 2 + 1; rep.Written != want || rep.Deleted != 0 {
		t.Errorf("first sync: %+v, want %d written", rep, want)
	}
	for typ, hids := range map[string][]string{
		"Patient": e.demo.Patients, "Appointment": e.demo.Appointments, "Coverage": e.demo.Policies, "Claim": e.demo.Claims,
		"Practitioner": e.demo.Providers, "PractitionerRole": e.demo.Providers, "Location": e.demo.Locations,
	} {
		got, _ := searchAll(t, e.fhir+"/"+typ+"?_count=5")
		gotIDs := ids(got)
		sort.Strings(gotIDs)
		if !slices.Equal(gotIDs, localIDs(hids)) {
			t.Errorf("local %s: %v, want %v", typ, gotIDs, localIDs(hids))
		}
		for _, r := range got {
			hasFacadeMarks(t, r, e.gql)
		}
	}
	// The local server's own search parameters work on synced data, and
	// references point at the synced copies.
	p := e.demo.Patients[2]
	byName := e.local(http.MethodGet, "/Patient?family=Hopper", nil).want(t, 200)
	if got := ids(entries(byName.JSON)); !slices.Equal(got, []string{healthie.IDPrefix + p}) {
		t.Errorf("Patient?family=Hopper: %v", got)
	}
	byTag := e.local(http.MethodGet, "/Coverage?_tag="+healthie.TagSystem+"|"+healthie.TagCode+"&beneficiary=Patient/"+healthie.IDPrefix+p, nil).want(t, 200)
	if got := ids(entries(byTag.JSON)); !slices.Equal(got, []string{healthie.IDPrefix + e.demo.Policies[2]}) {
		t.Errorf("Coverage by tag and beneficiary: %v", got)
	}
	everything := e.local(http.MethodGet, "/Patient/"+healthie.IDPrefix+p+"/$everything", nil).want(t, 200)
	var types []string
	for _, en := range everything.JSON["entry"].([]any) {
		r := en.(map[string]any)["resource"].(map[string]any)
		types = append(types, r["resourceType"].(string)+"/"+r["id"].(string))
	}
	for _, want := range []string{"Patient/" + healthie.IDPrefix + p, "Appointment/" + healthie.IDPrefix + e.demo.Appointments[2],
		"Coverage/" + healthie.IDPrefix + e.demo.Policies[2], "Claim/" + healthie.IDPrefix + e.demo.Claims[2]} {
		if !slices.Contains(types, want) {
			t.Errorf("$everything lacks %s: %v", want, types)
		}
	}

	// A second sync writes nothing new.
	rep, err = e.h.Syncer().SyncAll(context.Background())
	if err != nil || rep.Written != 0 || rep.Unchanged != 4*12+2*2+2+1 {
		t.Errorf("second sync: %+v %v", rep, err)
	}
	// Clients cannot write the synced copies.
	pat := e.local(http.MethodGet, "/Patient/"+healthie.IDPrefix+p, nil).want(t, 200).JSON
	pat["gender"] = "other"
	if r := e.local(http.MethodPut, "/Patient/"+healthie.IDPrefix+p, pat); r.Status != http.StatusUnprocessableEntity || !strings.Contains(r.outcome(t), "Healthie") {
		t.Errorf("a client's write of a synced Patient: %d %s", r.Status, r.Body)
	}
	// Local resources of the same types are untouched by the guard.
	e.local(http.MethodPost, "/Patient", map[string]any{"resourceType": "Patient", "name": []any{map[string]any{"family": "Local"}}}).want(t, 201)
}

func TestSyncDeletesWhatHealthieDeleted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, patients(3), syncMode())
	if _, err := e.h.Syncer().SyncAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	appt, policy, claim := e.demo.Appointments[0], e.demo.Policies[1], e.demo.Claims[2]
	// A deleted appointment announced by webhook: the local copy answers
	// 410 as soon as the webhook is answered.
	e.facade(http.MethodDelete, "/Appointment/"+appt, nil).want(t, 204)
	e.sim.WaitWebhooks()
	e.local(http.MethodGet, "/Appointment/"+healthie.IDPrefix+appt, nil).want(t, 410)
	// Records removed without a webhook go at the next full sync.
	e.sim.Mutate(func(st *healthietest.State) {
		delete(st.Policies, policy)
		delete(st.Claims, claim)
	})
	e.local(http.MethodGet, "/Coverage/"+healthie.IDPrefix+policy, nil).want(t, 200)
	rep, err := e.h.Syncer().SyncAll(context.Background())
	if err != nil || rep.Deleted != 2 {
		t.Fatalf("sync after deletions: %+v %v", rep, err)
	}
	e.local(http.MethodGet, "/Coverage/"+healthie.IDPrefix+policy, nil).want(t, 410)
	e.local(http.MethodGet, "/Claim/"+healthie.IDPrefix+claim, nil).want(t, 410)
	e.facade(http.MethodGet, "/Coverage/"+policy, nil).want(t, 404)
	// A webhook about a deleted policy deletes too (here: already gone).
	status, err := e.sim.SendWebhook(context.Background(), e.hook, webhookSecret, healthietest.Event{ResourceID: policy, ResourceIDType: "Policy", EventType: "policy.deleted"})
	if err != nil || status != 200 {
		t.Errorf("policy.deleted: %d %v", status, err)
	}
	// A failing Healthie deletes nothing.
	e.sim.ForceRateLimit(1000, 0)
	if _, err := e.h.Syncer().SyncAll(context.Background()); err == nil {
		t.Fatal("a sync against a Healthie that only answers 429 succeeded")
	}
	e.sim.ForceRateLimit(0, 0)
	e.local(http.MethodGet, "/Patient/"+healthie.IDPrefix+e.demo.Patients[0], nil).want(t, 200)
}

func TestWebhooksFireSubscriptionsInSyncMode(t *testing.T) {
	t.Parallel()
	e := newEnv(t, patients(2), syncMode())
	e.h.Start(context.Background()) // the first full sync
	waitFor(t, "the first sync", func() bool { return !e.h.Syncer().Last().Finished.IsZero() })
	if last := e.h.Syncer().Last(); last.Error != "" {
		t.Fatalf("first sync: %s", last.Error)
	}
	rcv := newReceiver(t)
	e.local(http.MethodPost, "/Subscription", subscription(rcv.srv.URL, "Appointment?status=booked")).want(t, 201)
	policies := newReceiver(t)
	e.local(http.MethodPost, "/Subscription", subscription(policies.srv.URL, "Coverage?_tag="+healthie.TagSystem+"|"+healthie.TagCode)).want(t, 201)

	// An appointment booked in Healthie (not through the facade): the
	// webhook brings it into the store, and the Subscription fires.
	var hid string
	e.sim.Mutate(func(st *healthietest.State) {
		hid = st.NewID()
		now := time.Now().UTC()
		st.Appointments[hid] = &healthietest.Appointment{ID: hid, PatientID: e.demo.Patients[0], ProviderID: e.demo.Providers[0], TypeID: e.demo.Types[1],
			ContactType: "In Person", Date: now.Add(48 * time.Hour).Truncate(time.Hour), Length: 30, CreatedAt: now, UpdatedAt: now}
	})
	status, err := e.sim.SendWebhook(context.Background(), e.hook, webhookSecret, healthietest.Event{ResourceID: hid, ResourceIDType: "Appointment", EventType: "appointment.created"})
	if err != nil || status != 200 {
		t.Fatalf("appointment.created: %d %v", status, err)
	}
	e.local(http.MethodGet, "/Appointment/"+healthie.IDPrefix+hid, nil).want(t, 200)
	waitFor(t, "the Subscription's notification", func() bool {
		for _, b := range rcv.received() {
			if bytes.Contains(b, []byte(`"`+healthie.IDPrefix+hid+`"`)) {
				return true
			}
		}
		return false
	})

	// An updated policy: a thin payload with changed_fields.
	pol := e.demo.Policies[1]
	e.sim.Mutate(func(st *healthietest.State) {
		st.Policies[pol].GroupNum = "GRP-99"
		st.Policies[pol].UpdatedAt = st.Policies[pol].UpdatedAt.Add(time.Minute)
	})
	status, err = e.sim.SendWebhook(context.Background(), e.hook, webhookSecret, healthietest.Event{ResourceID: pol, ResourceIDType: "Policy", EventType: "policy.updated", ChangedFields: []string{"group_num"}})
	if err != nil || status != 200 {
		t.Fatalf("policy.updated: %d %v", status, err)
	}
	waitFor(t, "the policy notification", func() bool {
		for _, b := range policies.received() {
			var c map[string]any
			if json.Unmarshal(b, &c) == nil && c["id"] == healthie.IDPrefix+pol && strings.Contains(string(b), "GRP-99") {
				return true
			}
		}
		return false
	})

	// Booking through the facade in sync mode: the local store has it when
	// the POST is answered, before any webhook.
	start := time.Now().Add(96 * time.Hour).UTC().Truncate(time.Hour).Format(time.RFC3339)
	a := e.facade(http.MethodPost, "/Appointment", appointmentFor(e.demo.Patients[1], "", e.demo.Types[0], start)).want(t, 201)
	e.local(http.MethodGet, "/Appointment/"+healthie.IDPrefix+a.JSON["id"].(string), nil).want(t, 200)
	// The webhook that follows finds it unchanged: no second version.
	e.sim.WaitWebhooks()
	v := e.local(http.MethodGet, "/Appointment/"+healthie.IDPrefix+a.JSON["id"].(string), nil).want(t, 200).JSON
	if vid := v["meta"].(map[string]any)["versionId"]; vid != "1" {
		t.Errorf("the webhook after a facade booking made version %v", vid)
	}
}

// TestSyncNeverOverwritesWhatItDidNotCopy (rule 9): sync stores each
// Healthie record under an id derived from it (healthie-<id>) and writes
// there only over its own copy (the same meta.source), live or deleted. A
// resource put there by someone else (before sync mode was on, when the
// guard on healthie- ids did not run) stays as it is; that record is not
// copied, the others are.
func TestSyncNeverOverwritesWhatItDidNotCopy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, patients(3), syncMode())
	taken, gone := healthie.IDPrefix+e.demo.Patients[0], healthie.IDPrefix+e.demo.Patients[1]
	err := e.st.Write(context.Background(), func(tx *store.Tx) error {
		for _, id := range []string{taken, gone} {
			raw := []byte(`{"resourceType":"Patient","id":"` + id + `","name":[{"family":"Local"}],"meta":{"source":"urn:local"}}`)
			doc, err := e.fs.ParseResource(raw, "Patient")
			if err != nil {
				return err
			}
			if _, err := tx.Put(doc, store.PutOptions{}); err != nil {
				return err
			}
		}
		_, err := tx.Delete("Patient", gone, 0)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.h.Syncer().SyncAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if p := e.local(http.MethodGet, "/Patient/"+taken, nil).want(t, 200).JSON; p["name"].([]any)[0].(map[string]any)["family"] != "Local" {
		t.Errorf("the local Patient was overwritten: %v", p)
	}
	e.local(http.MethodGet, "/Patient/"+gone, nil).want(t, 410)
	e.local(http.MethodGet, "/Patient/"+healthie.IDPrefix+e.demo.Patients[2], nil).want(t, 200)
}
