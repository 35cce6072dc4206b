package healthietest

import (
	"fmt"
	"slices"
	"strings"
	"time"

	graphql "github.com/graph-gophers/graphql-go"
)

// Mutations answer validation problems in `messages`, as Healthie does,
// not as GraphQL errors; the object is then null.

type fieldError struct{ F, M string }

func (e *fieldError) Field() *string   { return str(e.F) }
func (e *fieldError) Message() *string { return str(e.M) }

func msgs(errs []*fieldError) *[]*fieldError {
	if errs == nil {
		errs = []*fieldError{}
	}
	return &errs
}

type createAppointmentInput struct {
	UserID            *string
	AppointmentTypeID *string
	ContactType       *string
	OtherPartyID      *string
	Datetime          *string
	Notes             *string
	Location          *string
}

type apptPayload struct {
	appt *apptView
	errs []*fieldError
}

func (p *apptPayload) Appointment() *apptView   { return p.appt }
func (p *apptPayload) Messages() *[]*fieldError { return msgs(p.errs) }

func val(p *string) string {
	if p == nil {
		return ""
	}
	return strings.TrimSpace(*p)
}

// parseDatetime accepts "YYYY-MM-DD HH:MM:SS" (UTC) or ISO 8601.
func parseDatetime(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC3339, "2006-01-02 15:04:05", "2006-01-02T15:04:05", "2006-01-02 15:04"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("not a datetime")
}

func (r *root) CreateAppointment(args struct{ Input *createAppointmentInput }) *apptPayload {
	in := args.Input
	if in == nil {
		in = &createAppointmentInput{}
	}
	st := r.s.st
	var errs []*fieldError
	patient := st.Users[val(in.UserID)]
	if patient == nil || !patient.IsPatient {
		errs = append(errs, &fieldError{"user_id", "Client not found"})
	}
	providerID := val(in.OtherPartyID)
	if providerID == "" {
		providerID = r.s.currentUser
	}
	if p := st.Users[providerID]; p == nil || p.IsPatient {
		errs = append(errs, &fieldError{"other_party_id", "Provider not found"})
	}
	typ := st.AppointmentTypes[val(in.AppointmentTypeID)]
	if typ == nil {
		errs = append(errs, &fieldError{"appointment_type_id", "Appointment type not found"})
	}
	ct := val(in.ContactType)
	switch {
	case ct == "":
		errs = append(errs, &fieldError{"contact_type", "Contact type can't be blank"})
	case typ != nil && len(typ.ContactTypes) > 0 && !slices.Contains(typ.ContactTypes, ct):
		errs = append(errs, &fieldError{"contact_type", fmt.Sprintf("%s is not available for %s", ct, typ.Name)})
	}
	when, err := parseDatetime(val(in.Datetime))
	if err != nil {
		errs = append(errs, &fieldError{"datetime", "Datetime is invalid"})
	}
	if len(errs) > 0 {
		return &apptPayload{errs: errs}
	}
	now := r.s.now()
	ap := &Appointment{
		ID: st.NewID(), PatientID: patient.ID, ProviderID: providerID, TypeID: typ.ID, ContactType: ct,
		Date: when, Length: typ.Length, Location: val(in.Location), Notes: val(in.Notes), CreatedAt: now, UpdatedAt: now,
	}
	st.Appointments[ap.ID] = ap
	r.s.queueWebhook("appointment.created", "Appointment", ap.ID, nil)
	return &apptPayload{appt: &apptView{r.s, ap}}
}

func (r *root) DeleteAppointment(args struct {
	Input *struct {
		ID              *graphql.ID
		DeleteRecurring *bool
	}
}) *apptPayload {
	var id string
	if args.Input != nil && args.Input.ID != nil {
		id = string(*args.Input.ID)
	}
	ap := r.s.st.Appointments[id]
	if ap == nil || !ap.DeletedAt.IsZero() {
		return &apptPayload{errs: []*fieldError{{"id", "Appointment not found"}}}
	}
	ap.DeletedAt = r.s.now()
	ap.UpdatedAt = ap.DeletedAt
	r.s.queueWebhook("appointment.deleted", "Appointment", ap.ID, nil)
	return &apptPayload{appt: &apptView{r.s, ap}}
}

type clientLocationInput struct {
	Line1, Line2, City, State, Zip, Country *string
}

func (in *clientLocationInput) address() *Address {
	if in == nil {
		return nil
	}
	return &Address{Line1: val(in.Line1), Line2: val(in.Line2), City: val(in.City), State: val(in.State), Zip: val(in.Zip), Country: val(in.Country)}
}

type createClientInput struct {
	FirstName        *string
	LastName         *string
	LegalName        *string
	Email            *string
	SkippedEmail     *bool
	PhoneNumber      *string
	Dob              *string
	Gender           *string
	DietitianID      *string
	RecordIdentifier *string
	DontSendWelcome  *bool
	Location         *clientLocationInput
}

type userPayload struct {
	user *userView
	errs []*fieldError
}

func (p *userPayload) User() *userView          { return p.user }
func (p *userPayload) Messages() *[]*fieldError { return msgs(p.errs) }

func checkDOB(dob *string, errs []*fieldError) []*fieldError {
	if d := val(dob); d != "" {
		if _, err := time.Parse("2006-01-02", d); err != nil {
			errs = append(errs, &fieldError{"dob", "Dob must be YYYY-MM-DD"})
		}
	}
	return errs
}

func (r *root) CreateClient(args struct{ Input *createClientInput }) *userPayload {
	in := args.Input
	if in == nil {
		in = &createClientInput{}
	}
	var errs []*fieldError
	if val(in.FirstName) == "" {
		errs = append(errs, &fieldError{"first_name", "First name can't be blank"})
	}
	if val(in.LastName) == "" {
		errs = append(errs, &fieldError{"last_name", "Last name can't be blank"})
	}
	if val(in.Email) == "" && (in.SkippedEmail == nil || !*in.SkippedEmail) {
		errs = append(errs, &fieldError{"email", "Email can't be blank"})
	}
	dietitian := val(in.DietitianID)
	if dietitian == "" {
		dietitian = r.s.currentUser
	}
	if p := r.s.st.Users[dietitian]; p == nil || p.IsPatient {
		errs = append(errs, &fieldError{"dietitian_id", "Provider not found"})
	}
	errs = checkDOB(in.Dob, errs)
	if len(errs) > 0 {
		return &userPayload{errs: errs}
	}
	now := r.s.now()
	u := &User{
		ID: r.s.st.NewID(), FirstName: val(in.FirstName), LastName: val(in.LastName), LegalName: val(in.LegalName),
		Email: val(in.Email), PhoneNumber: val(in.PhoneNumber), DOB: val(in.Dob), Gender: val(in.Gender),
		RecordIdentifier: val(in.RecordIdentifier), IsPatient: true, DietitianID: dietitian,
		Address: in.Location.address(), CreatedAt: now, UpdatedAt: now,
	}
	r.s.st.Users[u.ID] = u
	r.s.queueWebhook("patient.created", "User", u.ID, nil)
	return &userPayload{user: &userView{r.s, u}}
}

type updateClientInput struct {
	ID               *graphql.ID
	FirstName        *string
	LastName         *string
	LegalName        *string
	Email            *string
	PhoneNumber      *string
	Dob              *string
	Gender           *string
	Active           *bool
	RecordIdentifier *string
	DietitianID      *string
	Location         *clientLocationInput
}

func (r *root) UpdateClient(args struct{ Input *updateClientInput }) *userPayload {
	in := args.Input
	if in == nil || in.ID == nil {
		return &userPayload{errs: []*fieldError{{"id", "Id can't be blank"}}}
	}
	u := r.s.st.Users[string(*in.ID)]
	if u == nil || !u.IsPatient {
		return &userPayload{errs: []*fieldError{{"id", "Client not found"}}}
	}
	var errs []*fieldError
	if in.FirstName != nil && val(in.FirstName) == "" {
		errs = append(errs, &fieldError{"first_name", "First name can't be blank"})
	}
	if in.LastName != nil && val(in.LastName) == "" {
		errs = append(errs, &fieldError{"last_name", "Last name can't be blank"})
	}
	if in.DietitianID != nil {
		if p := r.s.st.Users[val(in.DietitianID)]; p == nil || p.IsPatient {
			errs = append(errs, &fieldError{"dietitian_id", "Provider not found"})
		}
	}
	errs = checkDOB(in.Dob, errs)
	if len(errs) > 0 {
		return &userPayload{errs: errs}
	}
	var changed []string
	set := func(field string, dst *string, v *string) {
		if v != nil && *dst != val(v) {
			*dst = val(v)
			changed = append(changed, field)
		}
	}
	set("first_name", &u.FirstName, in.FirstName)
	set("last_name", &u.LastName, in.LastName)
	set("legal_name", &u.LegalName, in.LegalName)
	set("email", &u.Email, in.Email)
	set("phone_number", &u.PhoneNumber, in.PhoneNumber)
	set("dob", &u.DOB, in.Dob)
	set("gender", &u.Gender, in.Gender)
	set("record_identifier", &u.RecordIdentifier, in.RecordIdentifier)
	set("dietitian_id", &u.DietitianID, in.DietitianID)
	if in.Active != nil && u.Archived == *in.Active {
		u.Archived = !*in.Active
		changed = append(changed, "active")
	}
	if in.Location != nil {
		a := in.Location.address()
		if u.Address == nil || *u.Address != *a {
			u.Address = a
			changed = append(changed, "location")
		}
	}
	if len(changed) > 0 {
		u.UpdatedAt = r.s.now()
		r.s.queueWebhook("patient.updated", "User", u.ID, changed)
	}
	return &userPayload{user: &userView{r.s, u}}
}
