package healthie

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/Khan/genqlient/graphql"

	"github.com/p2pserver/p2pserver/internal/errs"
)

// Types lists the FHIR resource types the facade serves, in the order a
// full sync writes them (referenced before referencing).
var Types = []string{"Organization", "Practitioner", "PractitionerRole", "Location", "Patient", "Coverage", "Appointment", "Claim"}

// source reads Healthie records as FHIR resources with one mapper.
type source struct {
	c *Client
	m mapper
}

// listed is one resource of a listing, with the position just after it.
type listed struct {
	hid   string
	json  []byte
	after string
}

// narrow is what a search can tell Healthie to filter on; the rest is
// checked on the mapped resources.
type narrow struct {
	keywords string
	active   string // "active" or "archived"
	patient  string // Healthie user id
	provider string // Healthie provider id
}

func notFound(typ, id string) error {
	return errs.E("healthie.read", errs.NotFound, fmt.Sprintf("%s/%s is not known to Healthie", typ, id))
}

// read fetches one resource by Healthie id: NotFound when Healthie has none,
// Gone when Healthie keeps it as deleted.
func (s source) read(ctx context.Context, typ, hid string) ([]byte, error) {
	c := s.c
	switch typ {
	case "Patient":
		r, err := call(ctx, c, "user", func(ctx context.Context, g graphql.Client) (*GetPatientResponse, error) {
			return GetPatient(ctx, g, hid)
		})
		if err != nil {
			return nil, err
		}
		if r.User.Id == "" || !r.User.Is_patient {
			return nil, notFound(typ, hid)
		}
		return s.m.Patient(&r.User.PatientFields), nil
	case "Practitioner", "PractitionerRole":
		r, err := call(ctx, c, "user", func(ctx context.Context, g graphql.Client) (*GetProviderResponse, error) {
			return GetProvider(ctx, g, hid)
		})
		if err != nil {
			return nil, err
		}
		if r.User.Id == "" || r.User.Is_patient {
			return nil, notFound(typ, hid)
		}
		if typ == "Practitioner" {
			return s.m.Practitioner(&r.User.ProviderFields), nil
		}
		return s.m.PractitionerRole(&r.User.ProviderFields), nil
	case "Organization":
		r, err := call(ctx, c, "organization", func(ctx context.Context, g graphql.Client) (*GetOrganizationResponse, error) {
			return GetOrganization(ctx, g, hid)
		})
		if err != nil {
			return nil, err
		}
		if r.Organization.Id == "" || (hid != "" && r.Organization.Id != hid) {
			return nil, notFound(typ, hid)
		}
		return s.m.Organization(&r.Organization.OrganizationFields), nil
	case "Location":
		r, err := call(ctx, c, "location", func(ctx context.Context, g graphql.Client) (*GetLocationResponse, error) {
			return GetLocation(ctx, g, hid)
		})
		if err != nil {
			return nil, err
		}
		if r.Location.Id == "" {
			return nil, notFound(typ, hid)
		}
		return s.m.Location(&r.Location.LocationFields), nil
	case "Appointment":
		r, err := call(ctx, c, "appointment", func(ctx context.Context, g graphql.Client) (*GetAppointmentResponse, error) {
			return GetAppointment(ctx, g, hid)
		})
		if err != nil {
			return nil, err
		}
		if r.Appointment.Id == "" {
			return nil, notFound(typ, hid)
		}
		if r.Appointment.Deleted_at != "" {
			return nil, errs.E("healthie.read", errs.Gone, fmt.Sprintf("Appointment/%s was deleted in Healthie", hid))
		}
		return s.m.Appointment(&r.Appointment.AppointmentFields), nil
	case "Coverage":
		r, err := call(ctx, c, "policy", func(ctx context.Context, g graphql.Client) (*GetPolicyResponse, error) { return GetPolicy(ctx, g, hid) })
		if err != nil {
			return nil, err
		}
		if r.Policy.Id == "" {
			return nil, notFound(typ, hid)
		}
		return s.m.Coverage(&r.Policy.PolicyFields), nil
	case "Claim":
		r, err := call(ctx, c, "cms1500", func(ctx context.Context, g graphql.Client) (*GetClaimResponse, error) { return GetClaim(ctx, g, hid) })
		if err != nil {
			return nil, err
		}
		if r.Cms1500.Id == "" {
			return nil, notFound(typ, hid)
		}
		return s.m.Claim(&r.Cms1500.ClaimFields), nil
	}
	return nil, errs.E("healthie.read", errs.NotFound, fmt.Sprintf("the Healthie facade does not serve %s", typ))
}

func offsetOf(pos string) (int, error) {
	if pos == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(pos)
	if err != nil || n < 0 {
		return 0, errs.E("healthie.page", errs.Invalid, "the page cursor is not one of this facade's")
	}
	return n, nil
}

// list fetches one Healthie page of typ from pos ("" for the start) and
// says whether more may follow.
func (s source) list(ctx context.Context, typ string, n narrow, pos string, size int) ([]listed, bool, error) {
	c := s.c
	if typ == "Appointment" {
		r, err := call(ctx, c, "appointments", func(ctx context.Context, g graphql.Client) (*ListAppointmentsResponse, error) {
			return ListAppointments(ctx, g, n.patient, n.provider, size, pos)
		})
		if err != nil {
			return nil, false, err
		}
		out := make([]listed, len(r.Appointments))
		for i := range r.Appointments {
			a := &r.Appointments[i].AppointmentFields
			out[i] = listed{a.Id, s.m.Appointment(a), a.Cursor}
		}
		return out, len(out) == size, nil
	}
	if typ == "Coverage" {
		return s.listCoverage(ctx, n, pos, size)
	}
	off, err := offsetOf(pos)
	if err != nil {
		return nil, false, err
	}
	var out []listed
	add := func(hid string, body []byte) {
		out = append(out, listed{hid, body, strconv.Itoa(off + len(out) + 1)})
	}
	switch typ {
	case "Patient":
		r, err := call(ctx, c, "users", func(ctx context.Context, g graphql.Client) (*ListPatientsResponse, error) {
			return ListPatients(ctx, g, off, size, n.keywords, n.active)
		})
		if err != nil {
			return nil, false, err
		}
		for i := range r.Users {
			add(r.Users[i].Id, s.m.Patient(&r.Users[i].PatientFields))
		}
	case "Practitioner", "PractitionerRole":
		r, err := call(ctx, c, "organizationMembers", func(ctx context.Context, g graphql.Client) (*ListProvidersResponse, error) {
			return ListProviders(ctx, g, off, size, n.keywords)
		})
		if err != nil {
			return nil, false, err
		}
		for i := range r.OrganizationMembers {
			p := &r.OrganizationMembers[i].ProviderFields
			if typ == "Practitioner" {
				add(p.Id, s.m.Practitioner(p))
			} else {
				add(p.Id, s.m.PractitionerRole(p))
			}
		}
	case "Organization":
		if off > 0 {
			return nil, false, nil
		}
		r, err := call(ctx, c, "organization", func(ctx context.Context, g graphql.Client) (*GetOrganizationResponse, error) {
			return GetOrganization(ctx, g, "")
		})
		if err != nil {
			return nil, false, err
		}
		if r.Organization.Id != "" {
			add(r.Organization.Id, s.m.Organization(&r.Organization.OrganizationFields))
		}
		return out, false, nil
	case "Location":
		r, err := call(ctx, c, "locations", func(ctx context.Context, g graphql.Client) (*ListLocationsResponse, error) {
			return ListLocations(ctx, g, off, size, "")
		})
		if err != nil {
			return nil, false, err
		}
		for i := range r.Locations {
			add(r.Locations[i].Id, s.m.Location(&r.Locations[i].LocationFields))
		}
	case "Claim":
		r, err := call(ctx, c, "cms1500s", func(ctx context.Context, g graphql.Client) (*ListClaimsResponse, error) {
			return ListClaims(ctx, g, off, size, n.patient, n.provider)
		})
		if err != nil {
			return nil, false, err
		}
		for i := range r.Cms1500s {
			add(r.Cms1500s[i].Id, s.m.Claim(&r.Cms1500s[i].ClaimFields))
		}
	default:
		return nil, false, errs.E("healthie.list", errs.NotFound, fmt.Sprintf("the Healthie facade does not serve %s", typ))
	}
	return out, len(out) == size, nil
}

// listCoverage lists policies: one patient's when the search names one
// (positions are how many were listed), otherwise every patient's, page by
// page of patients (positions are "<patient offset>.<policies of that
// patient already listed>"). Pages of patients without policies are read
// through, so an empty answer means the end.
func (s source) listCoverage(ctx context.Context, n narrow, pos string, size int) ([]listed, bool, error) {
	c := s.c
	if n.patient != "" {
		skip, err := offsetOf(pos)
		if err != nil {
			return nil, false, err
		}
		r, err := call(ctx, c, "user", func(ctx context.Context, g graphql.Client) (*GetPatientPoliciesResponse, error) {
			return GetPatientPolicies(ctx, g, n.patient)
		})
		if err != nil || !r.User.Is_patient {
			return nil, false, err
		}
		var out []listed
		for i := skip; i < len(r.User.Policies); i++ {
			p := &r.User.Policies[i].PolicyFields
			out = append(out, listed{p.Id, s.m.Coverage(p), strconv.Itoa(i + 1)})
		}
		return out, false, nil
	}
	userOff, skip := 0, 0
	if pos != "" {
		a, b, ok := strings.Cut(pos, ".")
		var err1, err2 error
		userOff, err1 = strconv.Atoi(a)
		skip, err2 = strconv.Atoi(b)
		if !ok || err1 != nil || err2 != nil || userOff < 0 || skip < 0 {
			return nil, false, errs.E("healthie.page", errs.Invalid, "the page cursor is not one of this facade's")
		}
	}
	for {
		r, err := call(ctx, c, "users", func(ctx context.Context, g graphql.Client) (*ListPatientPoliciesResponse, error) {
			return ListPatientPolicies(ctx, g, userOff, size)
		})
		if err != nil {
			return nil, false, err
		}
		var out []listed
		for ui, u := range r.Users {
			for pi := range u.Policies {
				if ui == 0 && pi < skip {
					continue
				}
				p := &u.Policies[pi].PolicyFields
				after := fmt.Sprintf("%d.%d", userOff+ui, pi+1)
				if pi == len(u.Policies)-1 {
					after = fmt.Sprintf("%d.0", userOff+ui+1)
				}
				out = append(out, listed{p.Id, s.m.Coverage(p), after})
			}
		}
		more := len(r.Users) == size
		if len(out) > 0 || !more {
			return out, more, nil
		}
		userOff, skip = userOff+len(r.Users), 0
	}
}
