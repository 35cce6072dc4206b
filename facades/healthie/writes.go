package healthie

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/Khan/genqlient/graphql"
	"github.com/go-chi/chi/v5"
	"github.com/vektah/gqlparser/v2/gqlerror"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// Writes go to Healthie through its mutations, one FHIR interaction to one
// mutation: POST Patient -> createClient, PUT Patient/{id} -> updateClient,
// POST Appointment -> createAppointment, DELETE Appointment/{id} ->
// deleteAppointment. What Healthie refuses comes back in the mutation's
// `messages` and is answered 422 with one issue per message, pointing at the
// FHIR element the Healthie field came from.

// supports reports whether the facade offers interaction on typ.
func supports(typ, interaction string) bool {
	for _, w := range writes[typ] {
		if w == interaction {
			return true
		}
	}
	return false
}

// readBody reads and structurally checks a FHIR resource of type typ.
func (f *Facade) readBody(w http.ResponseWriter, r *http.Request, typ string) (map[string]any, error) {
	const op = "healthie.write"
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt := strings.ToLower(strings.TrimSpace(strings.Split(ct, ";")[0]))
		if mt != "application/fhir+json" && mt != "application/json" && mt != "application/json+fhir" {
			return nil, errs.E(op, errs.UnsupportedMedia, "send the resource as application/fhir+json")
		}
	}
	body, err := fhir.ReadBody(w, r, f.cfg.MaxBody)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil || m == nil {
		return nil, errs.E(op, errs.Invalid, "the body is not a JSON object")
	}
	if rt, _ := m["resourceType"].(string); rt != typ {
		return nil, errs.E(op, errs.Invalid, fmt.Sprintf("the resource is a %q but the URL is for %s", rt, typ))
	}
	if issues := f.model.Validate(m); len(issues) > 0 {
		list := make([]errs.Issue, len(issues))
		for i, is := range issues {
			list[i] = errs.Issue{Code: "structure", Path: is.Path, Message: is.Message}
		}
		return nil, errs.E(op, errs.Invalid, fmt.Sprintf("the %s is not valid FHIR R4 (%d problems)", typ, len(issues)), list)
	}
	return m, nil
}

func (f *Facade) create(w http.ResponseWriter, r *http.Request) {
	typ := chi.URLParam(r, "type")
	if !supports(typ, "create") {
		f.unsupported(w, r)
		return
	}
	if err := access(r, typ, true); err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	if r.Header.Get("If-None-Exist") != "" {
		fhir.WriteError(w, r, errs.E("healthie.create", errs.MethodNotAllowed, "the Healthie facade does not support conditional create (If-None-Exist)"))
		return
	}
	m, err := f.readBody(w, r, typ)
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	if err := referencedReadable(r, m); err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	var hid string
	var body []byte
	switch typ {
	case "Patient":
		hid, body, err = f.createPatient(r.Context(), m)
	case "Appointment":
		hid, body, err = f.createAppointment(r.Context(), m)
	}
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	w.Header().Set("Location", f.cfg.BaseURL+"/"+typ+"/"+hid)
	writeBody(w, http.StatusCreated, body)
}

func (f *Facade) update(w http.ResponseWriter, r *http.Request) {
	typ, id := chi.URLParam(r, "type"), chi.URLParam(r, "id")
	if !supports(typ, "update") {
		f.unsupported(w, r)
		return
	}
	if err := access(r, typ, true); err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	m, err := f.readBody(w, r, typ)
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	if err := referencedReadable(r, m); err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	if bid, _ := m["id"].(string); bid != id {
		fhir.WriteError(w, r, errs.E("healthie.update", errs.Invalid, fmt.Sprintf("the resource id %q is not the id %q in the URL", bid, id)))
		return
	}
	body, err := f.updatePatient(r.Context(), id, m)
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	writeBody(w, http.StatusOK, body)
}

func (f *Facade) delete(w http.ResponseWriter, r *http.Request) {
	typ, id := chi.URLParam(r, "type"), chi.URLParam(r, "id")
	if !supports(typ, "delete") {
		f.unsupported(w, r)
		return
	}
	if err := access(r, typ, true); err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	if err := f.deleteAppointment(r.Context(), id); err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// referencedReadable checks that the request may read every type of the
// facade's resources that m refers to (an Appointment's patient and
// practitioner, a Patient's generalPractitioner): a write resolves them in
// Healthie, which would otherwise tell a caller that may not read them
// whether they exist, and act on them for it.
func referencedReadable(r *http.Request, m map[string]any) error {
	var refs []string
	for _, p := range objects(m["participant"]) {
		actor, _ := p["actor"].(map[string]any)
		refs = append(refs, str(actor, "reference"))
	}
	for _, gp := range objects(m["generalPractitioner"]) {
		refs = append(refs, str(gp, "reference"))
	}
	seen := map[string]bool{}
	for _, ref := range refs {
		for _, typ := range []string{"Patient", "Practitioner"} {
			if strings.Contains(ref, typ+"/") && !seen[typ] {
				seen[typ] = true
				if err := access(r, typ, false); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// fieldPaths tells which FHIR element a Healthie input field comes from.
var fieldPaths = map[string]string{
	"first_name": "Patient.name.given", "last_name": "Patient.name.family", "legal_name": "Patient.name.given",
	"email": "Patient.telecom", "phone_number": "Patient.telecom", "dob": "Patient.birthDate", "gender": "Patient.gender",
	"dietitian_id": "Patient.generalPractitioner", "record_identifier": "Patient.identifier",
	"user_id": "Appointment.participant.actor", "other_party_id": "Appointment.participant.actor",
	"appointment_type_id": "Appointment.serviceType", "contact_type": "Appointment.extension",
	"datetime": "Appointment.start", "notes": "Appointment.description", "location": "Appointment.participant.actor",
}

type fieldMessage interface {
	GetField() string
	GetMessage() string
}

// refused turns Healthie's validation messages into a 422.
func refused[T any, PT interface {
	*T
	fieldMessage
}](op string, msgs []T) error {
	if len(msgs) == 0 {
		return nil
	}
	issues := make([]errs.Issue, len(msgs))
	for i := range msgs {
		m := PT(&msgs[i])
		issues[i] = errs.Issue{Code: "business-rule", Path: fieldPaths[m.GetField()], Message: "Healthie: " + m.GetMessage()}
	}
	return errs.E(op, errs.Unprocessable, "Healthie refused the change", issues)
}

// ---- reading FHIR input ----

func str(m map[string]any, key string) string {
	s, _ := m[key].(string)
	return strings.TrimSpace(s)
}

func objects(v any) []map[string]any {
	arr, _ := v.([]any)
	var out []map[string]any
	for _, x := range arr {
		if o, ok := x.(map[string]any); ok {
			out = append(out, o)
		}
	}
	return out
}

// patientInput is what Healthie's client mutations take from a Patient.
type patientInput struct {
	first, last, legal, email, phone, dob, gender, record, dietitian string
	active                                                           bool
	location                                                         *ClientLocationInput
}

var healthieGender = map[string]string{"male": "Male", "female": "Female", "other": "Other"}

func (m *mapper) patientInput(p map[string]any) (patientInput, error) {
	in := patientInput{active: true}
	var issues []errs.Issue
	names := objects(p["name"])
	var usual, official map[string]any
	for _, n := range names {
		switch str(n, "use") {
		case "usual":
			usual = n
		case "official":
			official = n
		}
	}
	if usual == nil && len(names) > 0 {
		usual = names[0]
		if usual["use"] == "official" {
			official = nil
		}
	}
	given := func(n map[string]any) string { return strings.Join(asStrings(n["given"]), " ") }
	if usual != nil {
		in.first, in.last = given(usual), str(usual, "family")
	}
	if in.first == "" || in.last == "" {
		issues = append(issues, errs.Issue{Code: "required", Path: "Patient.name", Message: "Healthie needs a given and a family name"})
	}
	if official != nil && given(official) != in.first {
		in.legal = given(official)
	}
	for _, t := range objects(p["telecom"]) {
		switch str(t, "system") {
		case "email":
			if in.email == "" {
				in.email = str(t, "value")
			}
		case "phone":
			if in.phone == "" {
				in.phone = str(t, "value")
			}
		}
	}
	in.dob = str(p, "birthDate")
	if in.dob != "" && len(in.dob) != 10 {
		issues = append(issues, errs.Issue{Code: "value", Path: "Patient.birthDate", Message: "Healthie keeps a full date of birth (YYYY-MM-DD)"})
	}
	in.gender = healthieGender[str(p, "gender")]
	for _, id := range objects(p["identifier"]) {
		if str(id, "system") == IDSystem+"record-identifier" {
			in.record = str(id, "value")
		}
	}
	if gps := objects(p["generalPractitioner"]); len(gps) > 0 {
		hid, ok := m.hidOf("Practitioner", str(gps[0], "reference"))
		if !ok {
			issues = append(issues, errs.Issue{Code: "value", Path: "Patient.generalPractitioner", Message: "the general practitioner must be a Practitioner of this facade (Practitioner/<Healthie id>)"})
		}
		in.dietitian = hid
	}
	if a, ok := p["active"].(bool); ok {
		in.active = a
	}
	if addrs := objects(p["address"]); len(addrs) > 0 {
		a := addrs[0]
		lines := asStrings(a["line"])
		loc := &ClientLocationInput{City: str(a, "city"), State: str(a, "state"), Zip: str(a, "postalCode"), Country: str(a, "country")}
		if len(lines) > 0 {
			loc.Line1 = lines[0]
		}
		if len(lines) > 1 {
			loc.Line2 = strings.Join(lines[1:], ", ")
		}
		in.location = loc
	}
	if len(issues) > 0 {
		return in, errs.E("healthie.patient", errs.Unprocessable, "the Patient cannot be written to Healthie", issues)
	}
	return in, nil
}

func asStrings(v any) []string {
	arr, _ := v.([]any)
	var out []string
	for _, x := range arr {
		if s, ok := x.(string); ok && strings.TrimSpace(s) != "" {
			out = append(out, strings.TrimSpace(s))
		}
	}
	return out
}

func (f *Facade) createPatient(ctx context.Context, p map[string]any) (string, []byte, error) {
	const op = "healthie.create-patient"
	in, err := f.src.m.patientInput(p)
	if err != nil {
		return "", nil, err
	}
	// A client made through the facade gets no Healthie welcome email: the
	// practice decides when to invite a patient to Healthie's portal.
	input := CreateClientInput{First_name: in.first, Last_name: in.last, Legal_name: in.legal, Email: in.email, Skipped_email: in.email == "",
		Phone_number: in.phone, Dob: in.dob, Gender: in.gender, Dietitian_id: in.dietitian, Record_identifier: in.record,
		Dont_send_welcome: true, Location: in.location}
	began := time.Now()
	r, err := call(asMutation(ctx), f.src.c, "createClient", func(ctx context.Context, g graphql.Client) (*CreateClientResponse, error) {
		return CreateClient(ctx, g, input)
	})
	if err != nil && maybeDone(err) {
		// Healthie may have created the client though its answer was
		// lost: look for it as Healthie advises before anyone creates it
		// again (a search by email and name).
		if u, found := f.findCreatedPatient(context.WithoutCancel(ctx), input, began); found {
			f.src.c.log.Warn("healthie: createClient failed, but the client it created was found", "client", u.Id, "err", err)
			f.synced(ctx, "Patient", u.Id, func(m *mapper) []byte { return m.Patient(u) })
			return u.Id, f.src.m.Patient(u), nil
		}
	}
	if err != nil {
		return "", nil, err
	}
	if err := refused(op, r.CreateClient.Messages); err != nil {
		return "", nil, err
	}
	u := &r.CreateClient.User.PatientFields
	if u.Id == "" {
		return "", nil, errs.E(op, errs.Transient, "Healthie created no client and gave no reason")
	}
	f.synced(ctx, "Patient", u.Id, func(m *mapper) []byte { return m.Patient(u) })
	return u.Id, f.src.m.Patient(u), nil
}

func (f *Facade) updatePatient(ctx context.Context, hid string, p map[string]any) ([]byte, error) {
	const op = "healthie.update-patient"
	in, err := f.src.m.patientInput(p)
	if err != nil {
		return nil, err
	}
	cur, err := call(ctx, f.src.c, "user", func(ctx context.Context, g graphql.Client) (*GetPatientResponse, error) {
		return GetPatient(ctx, g, hid)
	})
	if err != nil {
		return nil, err
	}
	if cur.User.Id == "" || !cur.User.Is_patient {
		return nil, errs.E(op, errs.NotFound, fmt.Sprintf("Patient/%s is not known to Healthie; the facade cannot create a patient with an id of its choosing (POST instead)", hid))
	}
	if in.dietitian == "" {
		// Healthie requires a provider: keep the current one.
		in.dietitian = cur.User.Dietitian_id
	}
	if in.location == nil {
		in.location = &ClientLocationInput{}
	}
	input := UpdateClientInput{Id: hid, First_name: in.first, Last_name: in.last, Legal_name: in.legal, Email: in.email,
		Phone_number: in.phone, Dob: in.dob, Gender: in.gender, Active: in.active, Record_identifier: in.record,
		Dietitian_id: in.dietitian, Location: in.location}
	r, err := call(asMutation(ctx), f.src.c, "updateClient", func(ctx context.Context, g graphql.Client) (*UpdateClientResponse, error) {
		return UpdateClient(ctx, g, input)
	})
	if err != nil {
		return nil, err
	}
	if err := refused(op, r.UpdateClient.Messages); err != nil {
		return nil, err
	}
	u := &r.UpdateClient.User.PatientFields
	if u.Id == "" {
		return nil, errs.E(op, errs.Transient, "Healthie updated no client and gave no reason")
	}
	f.synced(ctx, "Patient", u.Id, func(m *mapper) []byte { return m.Patient(u) })
	return f.src.m.Patient(u), nil
}

// bookable are the Appointment statuses a new booking may carry: Healthie
// books, so anything else (fulfilled, cancelled...) cannot be created.
var bookable = map[string]bool{"booked": true, "proposed": true, "pending": true}

func (f *Facade) createAppointment(ctx context.Context, a map[string]any) (string, []byte, error) {
	const op = "healthie.create-appointment"
	m := &f.src.m
	var issues []errs.Issue
	if st := str(a, "status"); !bookable[st] {
		issues = append(issues, errs.Issue{Code: "business-rule", Path: "Appointment.status", Message: fmt.Sprintf("Healthie books appointments: a new one is booked (or proposed/pending), not %q", st)})
	}
	input := CreateAppointmentInput{Notes: str(a, "description")}
	for _, p := range objects(a["participant"]) {
		actor, _ := p["actor"].(map[string]any)
		ref := str(actor, "reference")
		switch {
		case strings.Contains(ref, "Patient/"):
			hid, ok := m.hidOf("Patient", ref)
			if !ok || input.User_id != "" {
				issues = append(issues, errs.Issue{Code: "value", Path: "Appointment.participant.actor", Message: "one Patient of this facade (Patient/<Healthie id>) must take part"})
			}
			input.User_id = hid
		case strings.Contains(ref, "Practitioner/"):
			hid, ok := m.hidOf("Practitioner", ref)
			if !ok || input.Other_party_id != "" {
				issues = append(issues, errs.Issue{Code: "value", Path: "Appointment.participant.actor", Message: "at most one Practitioner of this facade (Practitioner/<Healthie id>) can take part"})
			}
			input.Other_party_id = hid
		case ref == "" && str(actor, "display") != "":
			input.Location = str(actor, "display")
		default:
			issues = append(issues, errs.Issue{Code: "not-supported", Path: "Appointment.participant.actor", Message: fmt.Sprintf("Healthie appointments have a patient, a provider and a location text; %q cannot take part", ref)})
		}
	}
	if input.User_id == "" {
		issues = append(issues, errs.Issue{Code: "required", Path: "Appointment.participant.actor", Message: "the Patient the appointment is for is required"})
	}
	for _, st := range objects(a["serviceType"]) {
		for _, c := range objects(st["coding"]) {
			if str(c, "system") == IDSystem+"appointment-type" {
				input.Appointment_type_id = str(c, "code")
			}
		}
	}
	if input.Appointment_type_id == "" {
		issues = append(issues, errs.Issue{Code: "required", Path: "Appointment.serviceType", Message: "the Healthie appointment type is required, as a coding with system " + IDSystem + "appointment-type"})
	}
	start, err := time.Parse(time.RFC3339, str(a, "start"))
	if err != nil {
		issues = append(issues, errs.Issue{Code: "required", Path: "Appointment.start", Message: "the start (a dateTime with a time zone) is required"})
	}
	input.Datetime = start.UTC().Format(time.RFC3339)
	for _, ext := range objects(a["extension"]) {
		if str(ext, "url") == ContactTypeExtension {
			input.Contact_type = str(ext, "valueString")
		}
	}
	if len(issues) > 0 {
		return "", nil, errs.E(op, errs.Unprocessable, "the Appointment cannot be booked in Healthie", issues)
	}
	if input.Contact_type == "" {
		// The type's first way of holding it (video call, in person...).
		t, err := call(ctx, f.src.c, "appointmentType", func(ctx context.Context, g graphql.Client) (*GetAppointmentTypeResponse, error) {
			return GetAppointmentType(ctx, g, input.Appointment_type_id)
		})
		if err != nil {
			return "", nil, err
		}
		if len(t.AppointmentType.Available_contact_types) > 0 {
			input.Contact_type = t.AppointmentType.Available_contact_types[0]
		}
	}
	began := time.Now()
	r, err := call(asMutation(ctx), f.src.c, "createAppointment", func(ctx context.Context, g graphql.Client) (*CreateAppointmentResponse, error) {
		return CreateAppointment(ctx, g, input)
	})
	if err != nil && maybeDone(err) {
		// Healthie may have booked it though its answer was lost: look
		// for the booking before anyone books it again.
		if ap, found := f.findBookedAppointment(context.WithoutCancel(ctx), input, began); found {
			f.src.c.log.Warn("healthie: createAppointment failed, but the appointment it booked was found", "appointment", ap.Id, "err", err)
			f.synced(ctx, "Appointment", ap.Id, func(m *mapper) []byte { return m.Appointment(ap) })
			return ap.Id, m.Appointment(ap), nil
		}
	}
	if err != nil {
		return "", nil, err
	}
	if err := refused(op, r.CreateAppointment.Messages); err != nil {
		return "", nil, err
	}
	ap := &r.CreateAppointment.Appointment.AppointmentFields
	if ap.Id == "" {
		return "", nil, errs.E(op, errs.Transient, "Healthie booked no appointment and gave no reason")
	}
	f.synced(ctx, "Appointment", ap.Id, func(m *mapper) []byte { return m.Appointment(ap) })
	return ap.Id, m.Appointment(ap), nil
}

// maybeDone reports whether a failed mutation may nonetheless have been
// carried out by Healthie: no answer in time, a broken connection, or an
// answer of 500, 502 or 504. A mutation refused before Healthie acted
// (429, 503, a refused API key or connection, GraphQL errors) was not.
// Such a mutation is never repeated by the facade (Healthie documents no
// idempotency key), and the facade looks for what it made instead.
func maybeDone(err error) bool {
	var he *graphql.HTTPError
	if errors.As(err, &he) {
		return he.StatusCode == http.StatusInternalServerError || he.StatusCode == http.StatusBadGateway || he.StatusCode == http.StatusGatewayTimeout
	}
	var gl gqlerror.List
	if errors.As(err, &gl) {
		return false
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return false
	}
	return errs.KindOf(err) == errs.Timeout || errs.KindOf(err) == errs.Transient
}

// sinceSkew is how far Healthie's clock may be from this server's when
// telling whether a record was made by a call of ours.
const sinceSkew = 2 * time.Minute

// findCreatedPatient looks for the client a failed createClient may have
// made: Healthie's documented advice against duplicate accounts is to
// search for the email first, and a client is unique by email, first and
// last name. Every given field must agree, and the client must have
// changed since the call began.
func (f *Facade) findCreatedPatient(ctx context.Context, in CreateClientInput, began time.Time) (*PatientFields, bool) {
	keywords := in.Email
	if keywords == "" {
		keywords = strings.TrimSpace(in.First_name + " " + in.Last_name + " " + in.Dob)
	}
	r, err := call(ctx, f.src.c, "users", func(ctx context.Context, g graphql.Client) (*ListPatientsResponse, error) {
		return ListPatients(ctx, g, 0, 50, keywords, "")
	})
	if err != nil {
		return nil, false
	}
	for i := range r.Users {
		u := &r.Users[i].PatientFields
		at, ok := healthieTime(u.Updated_at)
		if !ok || at.Before(began.Add(-sinceSkew)) || !strings.EqualFold(u.First_name, in.First_name) || !strings.EqualFold(u.Last_name, in.Last_name) ||
			!strings.EqualFold(u.Email, in.Email) || (in.Dob != "" && u.Dob != in.Dob) || (in.Record_identifier != "" && u.Record_identifier != in.Record_identifier) {
			continue
		}
		return u, true
	}
	return nil, false
}

// findBookedAppointment looks for the appointment a failed
// createAppointment may have booked: the patient's appointment with the
// same provider, type and start, created since the call began.
func (f *Facade) findBookedAppointment(ctx context.Context, in CreateAppointmentInput, began time.Time) (*AppointmentFields, bool) {
	start, err := time.Parse(time.RFC3339, in.Datetime)
	if err != nil {
		return nil, false
	}
	after := ""
	for range 20 {
		r, err := call(ctx, f.src.c, "appointments", func(ctx context.Context, g graphql.Client) (*ListAppointmentsResponse, error) {
			return ListAppointments(ctx, g, in.User_id, in.Other_party_id, 100, after)
		})
		if err != nil || len(r.Appointments) == 0 {
			return nil, false
		}
		for i := range r.Appointments {
			ap := &r.Appointments[i].AppointmentFields
			date, ok := healthieTime(ap.Date)
			created, ok2 := healthieTime(ap.Created_at)
			if ok && ok2 && date.Equal(start) && !created.Before(began.Add(-sinceSkew)) && ap.User.Id == in.User_id &&
				(in.Other_party_id == "" || ap.Provider.Id == in.Other_party_id) && ap.Appointment_type.Id == in.Appointment_type_id {
				return ap, true
			}
		}
		after = r.Appointments[len(r.Appointments)-1].Cursor
	}
	return nil, false
}

func (f *Facade) deleteAppointment(ctx context.Context, hid string) error {
	const op = "healthie.delete-appointment"
	r, err := call(asMutation(ctx), f.src.c, "deleteAppointment", func(ctx context.Context, g graphql.Client) (*DeleteAppointmentResponse, error) {
		return DeleteAppointment(ctx, g, hid)
	})
	if err != nil {
		return err
	}
	if len(r.DeleteAppointment.Messages) > 0 {
		// Deleting what is already deleted succeeds, as FHIR's delete is
		// idempotent; deleting what never existed is a 404.
		if _, err := f.src.read(ctx, "Appointment", hid); errs.Is(err, errs.Gone) {
			f.syncedDelete(ctx, "Appointment", hid)
			return nil
		} else if err != nil {
			return err
		}
		return refused(op, r.DeleteAppointment.Messages)
	}
	f.syncedDelete(ctx, "Appointment", hid)
	return nil
}

// synced hands a resource the facade wrote to Healthie to the Syncer (sync
// mode), so the local store has it before the webhook arrives. A failure
// is logged: the webhook or the next sync brings the store up to date.
func (f *Facade) synced(ctx context.Context, typ, hid string, mapped func(m *mapper) []byte) {
	s := f.cfg.Syncer
	if s == nil {
		return
	}
	if _, err := s.put(ctx, typ, hid, mapped(&s.src.m)); err != nil {
		f.log.Warn("healthie: could not write to the local store what was written to Healthie; the next sync will", "type", typ, "id", hid, "err", err)
	}
}

func (f *Facade) syncedDelete(ctx context.Context, typ, hid string) {
	s := f.cfg.Syncer
	if s == nil {
		return
	}
	if err := s.remove(ctx, typ, hid); err != nil {
		f.log.Warn("healthie: could not delete from the local store what was deleted in Healthie; the next sync will", "type", typ, "id", hid, "err", err)
	}
}
