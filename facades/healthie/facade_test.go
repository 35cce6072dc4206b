package healthie_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/facades/healthie"
	"github.com/p2pserver/p2pserver/facades/healthie/healthietest"
	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/authz"
)

func hasFacadeMarks(t *testing.T, res map[string]any, simURL string) {
	t.Helper()
	meta, _ := res["meta"].(map[string]any)
	tags, _ := meta["tag"].([]any)
	if len(tags) != 1 || tags[0].(map[string]any)["system"] != healthie.TagSystem || tags[0].(map[string]any)["code"] != healthie.TagCode {
		t.Errorf("%s/%s lacks the facade tag: %v", res["resourceType"], res["id"], meta)
	}
	src, _ := meta["source"].(string)
	if !strings.HasSuffix(src, "/"+strings.TrimPrefix(res["id"].(string), healthie.IDPrefix)) || !strings.HasPrefix(src, simURL) {
		t.Errorf("%s/%s meta.source %q does not name its Healthie record", res["resourceType"], res["id"], src)
	}
}

func TestSearchPagesFollowNextLinks(t *testing.T) {
	t.Parallel()
	e := newEnv(t, patients(25))
	cases := []struct {
		typ   string
		count int
		want  []string
	}{
		{"Patient", 10, e.demo.Patients},
		{"Appointment", 7, e.demo.Appointments},
		{"Coverage", 4, e.demo.Policies},
		{"Claim", 10, e.demo.Claims},
		{"Practitioner", 1, e.demo.Providers},
		{"PractitionerRole", 1, e.demo.Providers},
		{"Location", 1, e.demo.Locations},
	}
	for _, c := range cases {
		got, pages := searchAll(t, fmt.Sprintf("%s/%s?_count=%d", e.base, c.typ, c.count))
		gotIDs := ids(got)
		want := append([]string(nil), c.want...)
		sort.Strings(want)
		sorted := append([]string(nil), gotIDs...)
		sort.Strings(sorted)
		if !slices.Equal(sorted, want) {
			t.Errorf("%s: paged ids %v, want %v", c.typ, gotIDs, want)
		}
		if wantPages := (len(c.want) + c.count - 1) / c.count; pages < wantPages {
			t.Errorf("%s: %d pages of %d for %d resources", c.typ, pages, c.count, len(c.want))
		}
		for _, r := range got {
			if r["resourceType"] != c.typ {
				t.Fatalf("%s search returned a %v", c.typ, r["resourceType"])
			}
			hasFacadeMarks(t, r, e.gql)
		}
	}

	// Appointments come in date order across Healthie's cursor pages.
	appts, _ := searchAll(t, e.base+"/Appointment?_count=4")
	for i := 1; i < len(appts); i++ {
		if appts[i-1]["start"].(string) > appts[i]["start"].(string) {
			t.Fatalf("appointments out of order at %d: %v then %v", i, appts[i-1]["start"], appts[i]["start"])
		}
	}

	// Criteria apply across pages, and next links keep them.
	first := do(t, http.MethodGet, e.base+"/Appointment?_count=2&patient=Patient/"+e.demo.Patients[3], nil).want(t, 200)
	if n := len(entries(first.JSON)); n != 1 || link(first.JSON, "next") != "" {
		t.Errorf("one patient's appointments: %d entries, next %q", n, link(first.JSON, "next"))
	}
	got, _ := searchAll(t, e.base+"/Patient?_count=2&birthdate=ge1960-01-01")
	for _, p := range got {
		if p["birthDate"].(string) < "1960-01-01" {
			t.Errorf("birthdate=ge1960 matched %v", p["birthDate"])
		}
	}
	if len(got) == 0 || len(got) == 25 {
		t.Errorf("birthdate=ge1960 matched %d of 25", len(got))
	}
	page := do(t, http.MethodGet, e.base+"/Patient?_count=3&gender=female", nil)
	if page.Status != http.StatusBadRequest || !strings.Contains(page.outcome(t), "gender") {
		t.Errorf("an unsupported parameter: %d %s", page.Status, page.Body)
	}
	lenient := do(t, http.MethodGet, e.base+"/Patient?_count=3&gender=female", nil, "Prefer", "handling=lenient").want(t, 200)
	if next := link(lenient.JSON, "next"); next == "" || strings.Contains(next, "gender") {
		t.Errorf("lenient search next link %q", next)
	}
	// FHIR string search: case-insensitive prefix, as Healthie's keyword
	// search is broader (any field, substring).
	for _, name := range []string{"Salk", "salk", "Hop", "Turing1"} {
		want := 0
		e.sim.Mutate(func(st *healthietest.State) {
			for _, u := range st.Users {
				if u.IsPatient && strings.HasPrefix(strings.ToLower(u.LastName), strings.ToLower(name)) {
					want++
				}
			}
		})
		res := do(t, http.MethodGet, e.base+"/Patient?family="+name, nil).want(t, 200)
		if n := len(entries(res.JSON)); n != want || want == 0 {
			t.Errorf("family=%s: %d matches, want %d", name, n, want)
		}
	}
	npi := do(t, http.MethodGet, e.base+"/Location?identifier="+url.QueryEscape(healthie.NPISystem+"|1407852890"), nil).want(t, 200)
	if locs := entries(npi.JSON); len(locs) != 1 || locs[0]["id"] != e.demo.Locations[0] {
		t.Errorf("Location by NPI: %s", npi.Body)
	}
	bad := do(t, http.MethodGet, e.base+"/Patient?_cursor=not-a-cursor", nil)
	if bad.Status != http.StatusBadRequest || !strings.Contains(bad.outcome(t), "next link") {
		t.Errorf("a forged cursor: %d %s", bad.Status, bad.Body)
	}
}

func TestReadMapsHealthieRecords(t *testing.T) {
	t.Parallel()
	e := newEnv(t, patients(3))
	p := e.facade(http.MethodGet, "/Patient/"+e.demo.Patients[0], nil).want(t, 200).JSON
	if p["birthDate"] != "1950-01-01" || p["gender"] != "male" {
		t.Errorf("Patient: %v", p)
	}
	if gp := p["generalPractitioner"].([]any)[0].(map[string]any)["reference"]; gp != "Practitioner/"+e.demo.Providers[0] {
		t.Errorf("generalPractitioner %v", gp)
	}
	c := e.facade(http.MethodGet, "/Claim/"+e.demo.Claims[0], nil).want(t, 200).JSON
	diag := c["diagnosis"].([]any)[0].(map[string]any)["diagnosisCodeableConcept"].(map[string]any)["coding"].([]any)[0].(map[string]any)
	item := c["item"].([]any)[0].(map[string]any)
	cpt := item["productOrService"].(map[string]any)["coding"].([]any)[0].(map[string]any)
	if diag["code"] != "E11.9" || cpt["code"] != "97802" || c["patient"].(map[string]any)["reference"] != "Patient/"+e.demo.Patients[0] {
		t.Errorf("Claim: %v", c)
	}
	cov := e.facade(http.MethodGet, "/Coverage/"+e.demo.Policies[1], nil).want(t, 200).JSON
	payor := cov["payor"].([]any)[0].(map[string]any)
	if payor["display"] != "UnitedHealthcare" || payor["identifier"].(map[string]any)["value"] != "87726" {
		t.Errorf("Coverage payor: %v", payor)
	}
	loc := e.facade(http.MethodGet, "/Location/"+e.demo.Locations[1], nil).want(t, 200).JSON
	if !strings.Contains(fmt.Sprint(loc["identifier"]), "1598746321") {
		t.Errorf("Location NPI: %v", loc["identifier"])
	}
	// A provider is not a Patient, and an unknown id is not found.
	e.facade(http.MethodGet, "/Patient/"+e.demo.Providers[0], nil).want(t, 404)
	nf := e.facade(http.MethodGet, "/Patient/999999", nil).want(t, 404)
	if !strings.Contains(nf.outcome(t), "not-found") {
		t.Errorf("404 outcome: %s", nf.Body)
	}
	// Healthie refusing the facade's key is the server's problem, not the
	// client's: 503 with a pointer to the setting.
	bad := newEnv(t, patients(1), withOptions(func(o *healthie.Options) { o.APIKey = "wrong-key" }))
	a := bad.facade(http.MethodGet, "/Patient/"+bad.demo.Patients[0], nil)
	if a.Status != http.StatusServiceUnavailable || !strings.Contains(a.outcome(t), "API key") {
		t.Errorf("wrong API key: %d %s", a.Status, a.Body)
	}
}

func appointmentFor(patient, provider, typ, start string) map[string]any {
	parts := []any{map[string]any{"actor": map[string]any{"reference": "Patient/" + patient}, "status": "accepted"}}
	if provider != "" {
		parts = append(parts, map[string]any{"actor": map[string]any{"reference": "Practitioner/" + provider}, "status": "accepted"})
	}
	a := map[string]any{"resourceType": "Appointment", "status": "booked", "start": start, "participant": parts, "description": "first visit"}
	if typ != "" {
		a["serviceType"] = []any{map[string]any{"coding": []any{map[string]any{"system": healthie.IDSystem + "appointment-type", "code": typ}}}}
	}
	return a
}

func (e *env) appointments() map[string]*healthietest.Appointment {
	out := map[string]*healthietest.Appointment{}
	e.sim.Mutate(func(st *healthietest.State) {
		for id, a := range st.Appointments {
			c := *a
			out[id] = &c
		}
	})
	return out
}

func TestBookAppointment(t *testing.T) {
	t.Parallel()
	e := newEnv(t, patients(2))
	before := len(e.appointments())
	start := time.Now().Add(72 * time.Hour).UTC().Truncate(time.Hour)
	a := e.facade(http.MethodPost, "/Appointment", appointmentFor(e.demo.Patients[1], e.demo.Providers[1], e.demo.Types[0], start.Format(time.RFC3339))).want(t, 201)
	id := a.JSON["id"].(string)
	if loc := a.Header.Get("Location"); loc != e.base+"/Appointment/"+id {
		t.Errorf("Location %q", loc)
	}
	booked := e.appointments()[id]
	if booked == nil || booked.PatientID != e.demo.Patients[1] || booked.ProviderID != e.demo.Providers[1] || !booked.Date.Equal(start) ||
		booked.TypeID != e.demo.Types[0] || booked.ContactType != "Healthie Video Call" || booked.Notes != "first visit" {
		t.Fatalf("Healthie has %+v", booked)
	}
	if a.JSON["start"] != start.Format(time.RFC3339) || a.JSON["minutesDuration"] != float64(60) || a.JSON["status"] != "booked" {
		t.Errorf("answered %s", a.Body)
	}
	read := e.facade(http.MethodGet, "/Appointment/"+id, nil).want(t, 200)
	if string(read.Body) != string(a.Body) {
		t.Errorf("read differs from the create answer:\n%s\n%s", read.Body, a.Body)
	}
	found := do(t, http.MethodGet, e.base+"/Appointment?patient=Patient/"+e.demo.Patients[1]+"&date="+start.Format("2006-01-02"), nil).want(t, 200)
	if got := ids(entries(found.JSON)); !slices.Equal(got, []string{id}) {
		t.Errorf("search by patient and date: %v", got)
	}

	// What cannot be booked says why, and Healthie is left as it was.
	cases := []struct {
		name string
		body map[string]any
		want string
	}{
		{"no type", appointmentFor(e.demo.Patients[0], "", "", start.Format(time.RFC3339)), "Appointment.serviceType"},
		{"unknown patient", appointmentFor("424242", "", e.demo.Types[0], start.Format(time.RFC3339)), "Client not found"},
		{"contact type the type lacks", func() map[string]any {
			m := appointmentFor(e.demo.Patients[0], "", e.demo.Types[1], start.Format(time.RFC3339))
			m["extension"] = []any{map[string]any{"url": healthie.ContactTypeExtension, "valueString": "Healthie Video Call"}}
			return m
		}(), "not available"},
		{"fulfilled", func() map[string]any {
			m := appointmentFor(e.demo.Patients[0], "", e.demo.Types[0], start.Format(time.RFC3339))
			m["status"] = "fulfilled"
			return m
		}(), "Appointment.status"},
		{"no start", func() map[string]any {
			m := appointmentFor(e.demo.Patients[0], "", e.demo.Types[0], "")
			delete(m, "start")
			return m
		}(), "Appointment.start"},
	}
	for _, c := range cases {
		r := e.facade(http.MethodPost, "/Appointment", c.body)
		if r.Status != http.StatusUnprocessableEntity || !strings.Contains(r.outcome(t), c.want) {
			t.Errorf("%s: %d %s", c.name, r.Status, r.Body)
		}
	}
	invalid := e.facade(http.MethodPost, "/Appointment", map[string]any{"resourceType": "Appointment", "status": "booked", "participant": "nobody"})
	if invalid.Status != http.StatusBadRequest {
		t.Errorf("a structurally invalid Appointment: %d %s", invalid.Status, invalid.Body)
	}
	if e.facade(http.MethodPost, "/Appointment", "{not json").Status != http.StatusBadRequest {
		t.Error("malformed JSON is not a 400")
	}
	if n := len(e.appointments()); n != before+1 {
		t.Errorf("Healthie has %d appointments, want %d (one booking)", n, before+1)
	}
}

func TestRateLimitedBurstBacksOffAndSucceeds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, patients(3), rateLimit(5), retries(40))
	// A forced run of 429s (no Retry-After): retried with backoff.
	e.sim.ForceRateLimit(3, 0)
	e.sim.ResetRequests()
	e.facade(http.MethodGet, "/Patient/"+e.demo.Patients[0], nil).want(t, 200)
	var statuses []int
	for _, r := range e.sim.Requests() {
		statuses = append(statuses, r.Status)
	}
	if !slices.Equal(statuses, []int{429, 429, 429, 200}) {
		t.Errorf("Healthie saw %v, want three 429s then a 200", statuses)
	}

	// A burst beyond Healthie's rate: every request ends well.
	e.sim.ResetRequests()
	const burst = 15
	var wg sync.WaitGroup
	codes := make([]int, burst)
	for i := range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i] = e.facade(http.MethodGet, "/Patient/"+e.demo.Patients[i%3], nil).Status
		}()
	}
	wg.Wait()
	limited := 0
	for _, r := range e.sim.Requests() {
		if r.Status == http.StatusTooManyRequests {
			limited++
		}
	}
	for i, c := range codes {
		if c != http.StatusOK {
			t.Errorf("request %d: %d", i, c)
		}
	}
	if limited == 0 {
		t.Error("the burst was never rate limited: the test proves nothing")
	}
	t.Logf("burst of %d: %d answers were 429 and retried", burst, limited)

	// Past the retries, the client hears 429 as an OperationOutcome.
	few := newEnv(t, patients(1), retries(2))
	few.sim.ForceRateLimit(10, 0)
	a := few.facade(http.MethodGet, "/Patient?_count=5", nil)
	if a.Status != http.StatusTooManyRequests || !strings.Contains(a.outcome(t), "throttled") {
		t.Errorf("after the retries: %d %s", a.Status, a.Body)
	}
	// A mutation refused with 429 was not done, so it is retried too.
	few.sim.ForceRateLimit(1, 0)
	few.facade(http.MethodPost, "/Appointment", appointmentFor(few.demo.Patients[0], "", few.demo.Types[1], time.Now().Add(time.Hour).UTC().Format(time.RFC3339))).want(t, 201)
}

func TestUpdatePatient(t *testing.T) {
	t.Parallel()
	e := newEnv(t, patients(2))
	id := e.demo.Patients[1]
	p := e.facade(http.MethodGet, "/Patient/"+id, nil).want(t, 200).JSON
	user := func() healthietest.User {
		var u healthietest.User
		e.sim.Mutate(func(st *healthietest.State) { u = *st.Users[id] })
		return u
	}
	p["name"] = []any{map[string]any{"use": "usual", "family": "Byron", "given": []any{"Ada", "Augusta"}}}
	p["birthDate"] = "1815-12-10"
	p["telecom"] = []any{map[string]any{"system": "email", "value": "ada@example.org"}}
	p["address"] = []any{map[string]any{"line": []any{"12 St James's Sq"}, "city": "London", "postalCode": "SW1", "country": "GB"}}
	p["active"] = false
	up := e.facade(http.MethodPut, "/Patient/"+id, p).want(t, 200).JSON
	u := user()
	if u.LastName != "Byron" || u.FirstName != "Ada Augusta" || u.DOB != "1815-12-10" || u.Email != "ada@example.org" || u.PhoneNumber != "" ||
		!u.Archived || u.Address == nil || u.Address.City != "London" || u.DietitianID != e.demo.Providers[1] {
		t.Fatalf("Healthie has %+v", u)
	}
	if up["birthDate"] != "1815-12-10" || up["active"] != false {
		t.Errorf("answered %v", up)
	}
	again := e.facade(http.MethodGet, "/Patient/"+id, nil).want(t, 200).JSON
	if fmt.Sprint(again["name"]) != fmt.Sprint(up["name"]) {
		t.Errorf("read after update: %v", again["name"])
	}

	// Refusals change nothing.
	before := user()
	noFamily := map[string]any{"resourceType": "Patient", "id": id, "name": []any{map[string]any{"given": []any{"Ada"}}}}
	if r := e.facade(http.MethodPut, "/Patient/"+id, noFamily); r.Status != 422 || !strings.Contains(r.outcome(t), "Patient.name") {
		t.Errorf("no family name: %d %s", r.Status, r.Body)
	}
	other := map[string]any{"resourceType": "Patient", "id": e.demo.Patients[0], "name": []any{map[string]any{"family": "X", "given": []any{"Y"}}}}
	if r := e.facade(http.MethodPut, "/Patient/"+id, other); r.Status != 400 || !strings.Contains(r.outcome(t), "not the id") {
		t.Errorf("id mismatch: %d %s", r.Status, r.Body)
	}
	badDob := map[string]any{"resourceType": "Patient", "id": id, "name": []any{map[string]any{"family": "X", "given": []any{"Y"}}}, "birthDate": "1815"}
	if r := e.facade(http.MethodPut, "/Patient/"+id, badDob); r.Status != 422 {
		t.Errorf("a partial birth date: %d %s", r.Status, r.Body)
	}
	badGP := map[string]any{"resourceType": "Patient", "id": id, "name": []any{map[string]any{"family": "X", "given": []any{"Y"}}},
		"generalPractitioner": []any{map[string]any{"reference": "Practitioner/" + e.demo.Patients[0]}}}
	if r := e.facade(http.MethodPut, "/Patient/"+id, badGP); r.Status != 422 || !strings.Contains(r.outcome(t), "Provider not found") {
		t.Errorf("a patient as general practitioner: %d %s", r.Status, r.Body)
	}
	if r := e.facade(http.MethodPut, "/Patient/"+id, map[string]any{"resourceType": "Patient", "id": id, "gender": 7}); r.Status != 400 {
		t.Errorf("invalid FHIR: %d %s", r.Status, r.Body)
	}
	if r := e.facade(http.MethodPut, "/Patient/"+id, p, "Content-Type", "application/xml"); r.Status != 415 {
		t.Errorf("XML body: %d %s", r.Status, r.Body)
	}
	if after := user(); after != before {
		t.Errorf("a refused update changed Healthie:\n%+v\n%+v", before, after)
	}
	unknown := map[string]any{"resourceType": "Patient", "id": "777777", "name": []any{map[string]any{"family": "X", "given": []any{"Y"}}}}
	e.facade(http.MethodPut, "/Patient/777777", unknown).want(t, 404)

	// POST creates a client.
	created := e.facade(http.MethodPost, "/Patient", map[string]any{"resourceType": "Patient",
		"name": []any{map[string]any{"family": "Franklin", "given": []any{"Rosalind"}}}, "birthDate": "1920-07-25", "gender": "female"}).want(t, 201).JSON
	var nu healthietest.User
	e.sim.Mutate(func(st *healthietest.State) { nu = *st.Users[created["id"].(string)] })
	if !nu.IsPatient || nu.LastName != "Franklin" || nu.Gender != "Female" || nu.DietitianID != e.sim.OwnerID() {
		t.Errorf("created %+v", nu)
	}
}

func TestDeletedAppointmentIsGone(t *testing.T) {
	t.Parallel()
	e := newEnv(t, patients(2))
	id := e.demo.Appointments[0]
	e.facade(http.MethodDelete, "/Appointment/"+id, nil).want(t, 204)
	if e.appointments()[id].DeletedAt.IsZero() {
		t.Fatal("Healthie still has the appointment")
	}
	gone := e.facade(http.MethodGet, "/Appointment/"+id, nil).want(t, 410)
	if !strings.Contains(gone.outcome(t), "deleted") {
		t.Errorf("410 outcome: %s", gone.Body)
	}
	e.facade(http.MethodDelete, "/Appointment/"+id, nil).want(t, 204) // idempotent
	e.facade(http.MethodDelete, "/Appointment/31337", nil).want(t, 404)
	all, _ := searchAll(t, e.base+"/Appointment")
	if slices.Contains(ids(all), id) {
		t.Error("a deleted appointment is still listed")
	}
	// _id searches skip it too.
	byID := e.facade(http.MethodGet, "/Appointment?_id="+id, nil).want(t, 200)
	if len(entries(byID.JSON)) != 0 {
		t.Errorf("_id search found the deleted appointment: %s", byID.Body)
	}
}

func TestRefusedInteractionsAnswerOperationOutcomes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, patients(1))
	pid := e.demo.Patients[0]
	practitioner := map[string]any{"resourceType": "Practitioner", "name": []any{map[string]any{"family": "X"}}}
	cases := []struct {
		method, path string
		body         any
		status       int
		headers      []string
	}{
		{"POST", "/Practitioner", practitioner, 405, nil},
		{"PUT", "/Appointment/" + e.demo.Appointments[0], map[string]any{"resourceType": "Appointment"}, 405, nil},
		{"DELETE", "/Patient/" + pid, nil, 405, nil},
		{"PATCH", "/Patient/" + pid, `[]`, 405, nil},
		{"GET", "/Patient/" + pid + "/_history", nil, 405, nil},
		{"GET", "/Patient/" + pid + "/_history/1", nil, 405, nil},
		{"GET", "/Patient/" + pid + "/$everything", nil, 405, nil},
		{"POST", "/", map[string]any{"resourceType": "Bundle", "type": "transaction"}, 405, nil},
		{"POST", "/Patient", map[string]any{"resourceType": "Patient"}, 405, []string{"If-None-Exist", "identifier=x"}},
		{"GET", "/Observation", nil, 404, nil},
		{"GET", "/Patient?_count=x", nil, 400, nil},
		{"GET", "/Patient/" + pid, nil, 406, []string{"Accept", "application/fhir+xml"}},
		{"GET", "/Patient?name:exact=Salk", nil, 400, nil},
	}
	for _, c := range cases {
		a := e.facade(c.method, c.path, c.body, c.headers...)
		if a.Status != c.status {
			t.Errorf("%s %s: %d, want %d: %s", c.method, c.path, a.Status, c.status, a.Body)
			continue
		}
		if a.JSON["resourceType"] != "OperationOutcome" {
			t.Errorf("%s %s: not an OperationOutcome: %s", c.method, c.path, a.Body)
		}
	}
	// Nothing reached Healthie's mutations.
	for _, r := range e.sim.Requests() {
		if strings.HasPrefix(strings.TrimSpace(r.Query), "mutation") {
			t.Errorf("a refused interaction ran %s", r.OperationName)
		}
	}
}

func TestMemberTokensCannotUseTheFacade(t *testing.T) {
	t.Parallel()
	member := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("X-Test-Member") != "" {
				r = r.WithContext(fhir.WithAccess(r.Context(), &fhir.Access{Patient: r.Header.Get("X-Test-Member")}))
			} else if r.Header.Get("X-Test-Readonly") != "" {
				r = r.WithContext(fhir.WithAccess(r.Context(), &fhir.Access{Grant: func(_ string, need authz.Perm) bool { return need&(authz.Create|authz.Update|authz.Delete) == 0 }}))
			}
			next.ServeHTTP(w, r)
		})
	}
	e := newEnv(t, patients(1), withMiddleware(member))
	e.facade(http.MethodGet, "/Patient/"+e.demo.Patients[0], nil, "X-Test-Member", "p1").want(t, 403)
	e.facade(http.MethodGet, "/Patient/"+e.demo.Patients[0], nil, "X-Test-Readonly", "1").want(t, 200)
	e.facade(http.MethodPost, "/Appointment", appointmentFor(e.demo.Patients[0], "", e.demo.Types[0], time.Now().UTC().Format(time.RFC3339)), "X-Test-Readonly", "1").want(t, 403)
}

// TestCapabilityStatementTellsTheTruth checks the statement lists exactly
// what the facade does: every type, interaction and search parameter listed
// works, and every write interaction not listed is refused.
func TestCapabilityStatementTellsTheTruth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, patients(2))
	cs := e.facade(http.MethodGet, "/metadata", nil).want(t, 200).JSON
	if cs["resourceType"] != "CapabilityStatement" || cs["fhirVersion"] != "4.0.1" {
		t.Fatalf("not an R4 CapabilityStatement: %v", cs["resourceType"])
	}
	rest := cs["rest"].([]any)[0].(map[string]any)
	var types []string
	listed := map[string][]string{}
	for _, x := range rest["resource"].([]any) {
		r := x.(map[string]any)
		typ := r["type"].(string)
		types = append(types, typ)
		for _, in := range r["interaction"].([]any) {
			listed[typ] = append(listed[typ], in.(map[string]any)["code"].(string))
		}
		for _, sp := range r["searchParam"].([]any) {
			name := sp.(map[string]any)["name"].(string)
			a := e.facade(http.MethodGet, "/"+typ+"?"+name+"="+sampleValue(name)+"&_count=1", nil)
			if a.Status != http.StatusOK {
				t.Errorf("%s?%s is listed but answers %d: %s", typ, name, a.Status, a.Body)
			}
		}
		if _, ok := rest["operation"]; ok {
			t.Error("the facade lists operations it does not have")
		}
	}
	if !slices.Equal(types, healthie.Types) {
		t.Errorf("types %v, want %v", types, healthie.Types)
	}
	want := map[string][]string{
		"Patient":     {"read", "search-type", "create", "update"},
		"Appointment": {"read", "search-type", "create", "delete"},
	}
	for _, typ := range types {
		w := want[typ]
		if w == nil {
			w = []string{"read", "search-type"}
		}
		if !slices.Equal(listed[typ], w) {
			t.Errorf("%s interactions %v, want %v", typ, listed[typ], w)
		}
		// What is not listed is refused.
		for _, probe := range []struct{ interaction, method, path string }{
			{"create", "POST", "/" + typ},
			{"update", "PUT", "/" + typ + "/1"},
			{"delete", "DELETE", "/" + typ + "/1"},
		} {
			if slices.Contains(listed[typ], probe.interaction) {
				continue
			}
			a := e.facade(probe.method, probe.path, map[string]any{"resourceType": typ, "id": "1"})
			if a.Status != http.StatusMethodNotAllowed {
				t.Errorf("%s %s (not listed) answers %d", probe.method, probe.path, a.Status)
			}
		}
	}
}

func sampleValue(param string) string {
	switch param {
	case "birthdate", "date", "created":
		return "ge2000-01-01"
	case "active":
		return "true"
	case "status":
		return "active"
	case "patient", "beneficiary":
		return "Patient/1"
	case "practitioner", "provider":
		return "Practitioner/1"
	}
	return "x"
}

func TestWebhookSignatureIsVerified(t *testing.T) {
	t.Parallel()
	e := newEnv(t, patients(2), syncMode())
	if _, err := e.h.Syncer().SyncAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	pid := e.demo.Patients[0]
	local := func() map[string]any {
		return e.local(http.MethodGet, "/Patient/"+healthie.IDPrefix+pid, nil).want(t, 200).JSON
	}
	before := local()
	// Healthie changes the patient; the deliveries below are about it.
	e.sim.Mutate(func(st *healthietest.State) {
		st.Users[pid].LastName = "Salk-Renamed"
		st.Users[pid].UpdatedAt = st.Users[pid].UpdatedAt.Add(time.Minute)
	})
	ev := healthietest.Event{ResourceID: pid, ResourceIDType: "User", EventType: "patient.updated", ChangedFields: []string{"last_name"}}
	body := []byte(fmt.Sprintf(`{"resource_id":%s,"resource_id_type":"User","event_type":"patient.updated","changed_fields":["last_name"]}`, pid))
	post := func(h http.Header, b []byte, query string) *answer {
		req, _ := http.NewRequest(http.MethodPost, e.hook+query, strings.NewReader(string(b)))
		for k, v := range h {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return &answer{Status: resp.StatusCode}
	}
	good := healthietest.SignWebhook(webhookSecret, "POST", "/api/webhooks/healthie", "", body)
	tampered := good.Clone()
	tampered.Set("Signature", "sig1="+strings.Repeat("ab", 32))
	noSig := good.Clone()
	noSig.Del("Signature")
	noDigest := good.Clone()
	noDigest.Del("Content-Digest")
	refusals := []struct {
		name  string
		h     http.Header
		body  []byte
		query string
	}{
		{"wrong secret", healthietest.SignWebhook("whsec_wrong", "POST", "/api/webhooks/healthie", "", body), body, ""},
		{"forged signature", tampered, body, ""},
		{"no signature", noSig, body, ""},
		{"no digest", noDigest, body, ""},
		{"unsigned", http.Header{"Content-Type": {"application/json"}}, body, ""},
		{"body swapped", good, []byte(strings.Replace(string(body), pid, e.demo.Patients[1], 1)), ""},
		{"signed for another path", healthietest.SignWebhook(webhookSecret, "POST", "/api/webhooks/other", "", body), body, ""},
		{"query added", good, body, "?x=1"},
	}
	for _, c := range refusals {
		if a := post(c.h, c.body, c.query); a.Status != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", c.name, a.Status)
		}
	}
	if after := local(); after["meta"].(map[string]any)["versionId"] != before["meta"].(map[string]any)["versionId"] {
		t.Fatalf("a refused delivery changed the store: %v", after["name"])
	}
	// The simulator signs it as Healthie does: accepted, and the store has
	// the new name.
	status, err := e.sim.SendWebhook(context.Background(), e.hook, webhookSecret, ev)
	if err != nil || status != http.StatusOK {
		t.Fatalf("signed delivery: %d %v", status, err)
	}
	after := local()
	if fam := after["name"].([]any)[0].(map[string]any)["family"]; fam != "Salk-Renamed" {
		t.Errorf("after the webhook the family name is %v", fam)
	}
	// Healthie sends resource_id as a number too.
	if a := post(healthietest.SignWebhook(webhookSecret, "POST", "/api/webhooks/healthie", "", body), body, ""); a.Status != http.StatusOK {
		t.Errorf("numeric resource_id: %d", a.Status)
	}
	// Events the facade does not serve are acknowledged and ignored; a
	// malformed payload, correctly signed, is a 400.
	other := []byte(`{"resource_id":"5","resource_id_type":"Note","event_type":"message.created"}`)
	if a := post(healthietest.SignWebhook(webhookSecret, "POST", "/api/webhooks/healthie", "", other), other, ""); a.Status != http.StatusOK {
		t.Errorf("ignored event: %d", a.Status)
	}
	junk := []byte(`{"resource_id":{"x":1},"event_type":"patient.updated"}`)
	if a := post(healthietest.SignWebhook(webhookSecret, "POST", "/api/webhooks/healthie", "", junk), junk, ""); a.Status != http.StatusBadRequest {
		t.Errorf("malformed payload: %d", a.Status)
	}
}

func TestWebhooksWithoutASecretAreRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, patients(1), withOptions(func(o *healthie.Options) { o.WebhookSecret = "" }))
	status, _ := e.sim.SendWebhook(context.Background(), e.hook, "", healthietest.Event{ResourceID: "1", EventType: "patient.updated"})
	if status != http.StatusUnauthorized {
		t.Errorf("unsigned delivery with no secret configured: %d", status)
	}
}
