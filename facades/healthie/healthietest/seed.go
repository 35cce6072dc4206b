package healthietest

import (
	"fmt"
	"time"
)

// Demo holds the ids of the records Seed made.
type Demo struct {
	Patients     []string
	Providers    []string
	Locations    []string
	Types        []string
	Appointments []string
	Plans        []string
	Policies     []string
	Claims       []string
}

var demoNames = [][2]string{
	{"Jonas", "Salk"}, {"Ada", "Lovelace"}, {"Grace", "Hopper"}, {"Alan", "Turing"}, {"Marie", "Curie"},
	{"Rosalind", "Franklin"}, {"Carl", "Gauss"}, {"Emmy", "Noether"}, {"Niels", "Bohr"}, {"Lise", "Meitner"},
	{"Dorothy", "Hodgkin"}, {"Max", "Planck"},
}

// Seed fills the simulator with a small practice: n patients (at most 12
// distinct names, then numbered), two providers, two locations with NPIs,
// two appointment types, an appointment per patient (alternating past and
// future), a policy per patient with one of two payers, and a CMS 1500 per
// patient with ICD-10 and CPT codes.
func (s *Simulator) Seed(n int) Demo {
	var d Demo
	s.Mutate(func(st *State) {
		now := s.now()
		st.Org.Address = &Address{Line1: "1 Main St", City: "New York", State: "NY", Zip: "10001", Country: "US"}
		st.Org.PhoneNumber = "555-444-2244"
		d.Providers = append(d.Providers, s.currentUser)
		p2 := &User{ID: st.NewID(), FirstName: "Paul", LastName: "Provider", Email: "paul@practice.example", NPI: "1245319599", Qualifications: "RD", OrgRole: "Standard", CreatedAt: now, UpdatedAt: now}
		st.Users[p2.ID] = p2
		d.Providers = append(d.Providers, p2.ID)
		for i, l := range []Location{
			{Name: "Midtown Office", Line1: "1 Main St", City: "New York", State: "NY", Zip: "10001", Country: "US", NPI: "1407852890"},
			{Name: "Brooklyn Office", Line1: "20 Court St", City: "Brooklyn", State: "NY", Zip: "11201", Country: "US", NPI: "1598746321"},
		} {
			l.ID = st.NewID()
			l.UserID = d.Providers[i]
			st.Locations[l.ID] = &l
			d.Locations = append(d.Locations, l.ID)
		}
		for _, t := range []AppointmentType{
			{Name: "Initial Consultation", Length: 60, ContactTypes: []string{"Healthie Video Call", "In Person", "Phone Call"}},
			{Name: "Follow-up", Length: 30, ContactTypes: []string{"In Person"}},
		} {
			t.ID = st.NewID()
			st.AppointmentTypes[t.ID] = &t
			d.Types = append(d.Types, t.ID)
		}
		for _, p := range []InsurancePlan{{PayerID: "60054", PayerName: "Aetna", Accepted: true}, {PayerID: "87726", PayerName: "UnitedHealthcare", Accepted: true}} {
			p.ID = st.NewID()
			st.Plans[p.ID] = &p
			d.Plans = append(d.Plans, p.ID)
		}
		for i := range n {
			name := demoNames[i%len(demoNames)]
			first, last := name[0], name[1]
			if i >= len(demoNames) {
				last = fmt.Sprintf("%s%d", last, i/len(demoNames))
			}
			prov := d.Providers[i%2]
			u := &User{
				ID: st.NewID(), FirstName: first, LastName: last, DOB: fmt.Sprintf("19%02d-%02d-%02d", 50+i%40, 1+i%12, 1+i%28),
				Gender: []string{"Male", "Female"}[i%2], Email: fmt.Sprintf("%s.%s@example.com", first, last),
				PhoneNumber: fmt.Sprintf("555-01%02d", i%100), RecordIdentifier: fmt.Sprintf("MRN-%04d", i+1), IsPatient: true, DietitianID: prov,
				Address:   &Address{Line1: fmt.Sprintf("%d Elm St", 10+i), City: "New York", State: "NY", Zip: "10002", Country: "US"},
				CreatedAt: now.Add(-time.Duration(n-i) * time.Hour), UpdatedAt: now,
			}
			st.Users[u.ID] = u
			d.Patients = append(d.Patients, u.ID)
			when := now.Add(time.Duration(i+1) * 24 * time.Hour).Truncate(time.Hour)
			status := ""
			if i%2 == 1 {
				when = now.Add(-time.Duration(i+1) * 24 * time.Hour).Truncate(time.Hour)
				status = "Occurred"
			}
			typ := st.AppointmentTypes[d.Types[i%2]]
			ap := &Appointment{ID: st.NewID(), PatientID: u.ID, ProviderID: prov, TypeID: typ.ID, ContactType: typ.ContactTypes[0], Date: when, Length: typ.Length, PMStatus: status, CreatedAt: now, UpdatedAt: now}
			st.Appointments[ap.ID] = ap
			d.Appointments = append(d.Appointments, ap.ID)
			plan := st.Plans[d.Plans[i%2]]
			pol := &Policy{ID: st.NewID(), UserID: u.ID, PlanID: plan.ID, Name: plan.PayerName + " PPO", Num: fmt.Sprintf("W%09d", 100000+i), GroupNum: "GRP-77",
				PriorityType: "Primary", HolderFirst: first, HolderLast: last, HolderDOB: u.DOB, HolderRelationship: "Self", EffectiveStart: "2024-01-01", UpdatedAt: now}
			st.Policies[pol.ID] = pol
			d.Policies = append(d.Policies, pol.ID)
			c := &Claim{ID: st.NewID(), PatientID: u.ID, ProviderID: prov, LocationID: d.Locations[i%2], Status: []string{"Not Sent", "Sent", "Partially Paid"}[i%3],
				DateOfService: when.Format("2006-01-02"), TotalCharge: "250.00", AmountPaid: "20.00", PolicyIDs: []string{pol.ID},
				ICD:       []Code{{"E11.9", "Type 2 diabetes mellitus without complications"}, {"E66.9", "Obesity, unspecified"}},
				Lines:     []ClaimLine{{Code: Code{"97802", "Medical nutrition therapy, initial"}, Units: 4, Fee: "50.00", Pointers: []int{1, 2}, ServiceDate: when.Format("2006-01-02")}, {Code: Code{"99213", "Office visit, established patient"}, Units: 1, Fee: "50.00", Modifiers: []string{"25"}, Pointers: []int{1}, ServiceDate: when.Format("2006-01-02")}},
				CreatedAt: now, UpdatedAt: now}
			st.Claims[c.ID] = c
			d.Claims = append(d.Claims, c.ID)
		}
	})
	return d
}
