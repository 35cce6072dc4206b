package healthie

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/spec"
)

func TestAppointmentStatusMapping(t *testing.T) {
	for pm, want := range map[string]string{
		"": "booked", "Occurred": "fulfilled", "No-Show": "noshow", "Cancelled": "cancelled", "Re-Scheduled": "cancelled", "Something new": "booked",
	} {
		if got := appointmentStatus(pm); got != want {
			t.Errorf("pm_status %q: %q, want %q", pm, got, want)
		}
	}
}

func TestHealthieTimesBecomeFHIRInstants(t *testing.T) {
	for in, want := range map[string]string{
		"2020-05-08 21:00:00 UTC":   "2020-05-08T21:00:00Z",
		"2020-05-08 17:00:00 -0400": "2020-05-08T21:00:00Z",
		"2020-05-08T21:00:00Z":      "2020-05-08T21:00:00Z",
		"yesterday":                 "",
		"":                          "",
	} {
		if got := fhirInstant(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

func samplePatient() *PatientFields {
	p := &PatientFields{Id: "1042", Is_patient: true, First_name: "Ada", Last_name: "Lovelace", Legal_name: "Augusta", Dob: "1815-12-10",
		Gender: "Female", Email: "ada@example.org", Phone_number: "555-0100", Active: true, Record_identifier: "MRN-1", Dietitian_id: "7",
		Updated_at: "2024-05-08 21:00:00 UTC"}
	p.Location.Line1, p.Location.City, p.Location.Zip = "1 Main St", "London", "SW1"
	return p
}

func sampleClaim() *ClaimFields {
	c := &ClaimFields{Id: "77", Status: "Sent", Patient_id: "1042", Dietitian_id: "7", Service_location_id: "9", Date_of_service: "2024-05-01",
		Total_charge: "250.00", Created_at: "2024-05-02 10:00:00 UTC", Updated_at: "2024-05-02 10:00:00 UTC"}
	c.Cms1500_policies = []ClaimFieldsCms1500_policiesCms1500Policy{{Policy_id: "55"}}
	c.Icd_codes_cms1500s = make([]ClaimFieldsIcd_codes_cms1500sIcdCodesCms1500, 2)
	c.Icd_codes_cms1500s[0].Icd_code.Code, c.Icd_codes_cms1500s[1].Icd_code.Code = "E11.9", "E66.9"
	c.Cpt_codes_cms1500s = make([]ClaimFieldsCpt_codes_cms1500sCptCodesCms1500, 2)
	for i := range c.Cpt_codes_cms1500s {
		l := &c.Cpt_codes_cms1500s[i]
		l.Cpt_code.Code, l.Units, l.Fee, l.Pointers, l.Mod1 = "97802", 4, "50.00", []string{"1", "2"}, "25"
	}
	return c
}

// The mapped resources are valid R4, as the local store requires in sync
// mode.
func TestMappedResourcesAreValidFHIR(t *testing.T) {
	m := mapper{source: "https://api.gethealthie.com/graphql", prefix: IDPrefix}
	model := spec.R4()
	for name, body := range map[string][]byte{"Patient": m.Patient(samplePatient()), "Claim": m.Claim(sampleClaim())} {
		var res map[string]any
		dec := json.NewDecoder(bytesReader(body))
		dec.UseNumber()
		if err := dec.Decode(&res); err != nil {
			t.Fatal(err)
		}
		if issues := model.Validate(res); len(issues) > 0 {
			t.Errorf("%s: %v\n%s", name, issues, body)
		}
		if res["id"] != IDPrefix+map[string]string{"Patient": "1042", "Claim": "77"}[name] {
			t.Errorf("%s id %v", name, res["id"])
		}
	}
	var claim struct {
		Item []struct {
			Net struct{ Value json.Number } `json:"net"`
		} `json:"item"`
		Insurance []struct {
			Coverage struct{ Reference string } `json:"coverage"`
		} `json:"insurance"`
	}
	if err := json.Unmarshal(m.Claim(sampleClaim()), &claim); err != nil {
		t.Fatal(err)
	}
	if claim.Item[0].Net.Value != "200" || claim.Insurance[0].Coverage.Reference != "Coverage/"+IDPrefix+"55" {
		t.Errorf("claim net %v, insurance %v", claim.Item[0].Net.Value, claim.Insurance[0].Coverage.Reference)
	}
}

// BenchmarkMapping measures turning Healthie records into FHIR JSON, the
// facade's own share of every read (Healthie's round trip excluded).
func BenchmarkMapping(b *testing.B) {
	m := mapper{source: "https://api.gethealthie.com/graphql"}
	p, c := samplePatient(), sampleClaim()
	b.Run("Patient", func(b *testing.B) {
		b.ReportAllocs()
		n := 0
		for b.Loop() {
			n += len(m.Patient(p))
		}
		b.ReportMetric(float64(n)/float64(b.N), "bytes/resource")
	})
	b.Run("Claim", func(b *testing.B) {
		b.ReportAllocs()
		n := 0
		for b.Loop() {
			n += len(m.Claim(c))
		}
		b.ReportMetric(float64(n)/float64(b.N), "bytes/resource")
	})
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
