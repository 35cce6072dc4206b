package healthie

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"time"
)

// Identifier systems and codes of the mapped resources.
const (
	// IDSystem prefixes the identifier systems carrying Healthie ids:
	// IDSystem+"user", +"appointment", +"policy", +"cms1500", +"location",
	// +"organization", +"appointment-type", +"insurance-plan", +"payer-id",
	// +"record-identifier".
	IDSystem = "https://gethealthie.com/fhir/id/"
	// NPISystem is the US National Provider Identifier system.
	NPISystem = "http://hl7.org/fhir/sid/us-npi"
	// TagSystem and TagCode make the meta.tag marking facade resources.
	TagSystem = "urn:p2pserver:facade"
	TagCode   = "healthie"
	// ContactTypeExtension carries Healthie's contact_type on Appointments
	// (R4 has no element for how an appointment is held).
	ContactTypeExtension = "https://gethealthie.com/fhir/StructureDefinition/contact-type"
	// ClaimStatusExtension carries a CMS 1500's billing status (Not Sent,
	// Sent, Partially Paid, ...) on Claims.
	ClaimStatusExtension = "https://gethealthie.com/fhir/StructureDefinition/cms1500-status"
	einSystem            = "urn:oid:2.16.840.1.113883.4.4"
	icd10System          = "http://hl7.org/fhir/sid/icd-10-cm"
	cptSystem            = "http://www.ama-assn.org/go/cpt"
)

// kv and obj build JSON objects that keep their member order, so mapped
// resources read like FHIR (resourceType first) and compare byte for byte.
type kv struct {
	k string
	v any
}

type obj []kv

func (o obj) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(m.k)
		b.Write(k)
		b.WriteByte(':')
		v, err := json.Marshal(m.v)
		if err != nil {
			return nil, err
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// set adds k unless v is empty (FHIR forbids empty strings, arrays and
// objects).
func (o obj) set(k string, v any) obj {
	switch x := v.(type) {
	case nil:
		return o
	case string:
		if x == "" {
			return o
		}
	case []any:
		if len(x) == 0 {
			return o
		}
	case []string:
		if len(x) == 0 {
			return o
		}
	case obj:
		if len(x) == 0 {
			return o
		}
	}
	return append(o, kv{k, v})
}

// mapper turns Healthie records into FHIR resources. Live, ids are the
// Healthie ids; synced into the local store they carry a prefix
// ("healthie-") so they cannot clash with local resources.
type mapper struct {
	prefix string
	source string // Healthie's GraphQL URL, for meta.source
}

func (m mapper) id(hid string) string { return m.prefix + hid }

func (m mapper) ref(typ, hid, display string) obj {
	if hid == "" {
		return nil
	}
	return obj{}.set("reference", typ+"/"+m.id(hid)).set("display", display)
}

// meta marks a facade resource: the tag, and meta.source naming the
// Healthie record (<GraphQL URL>#<Healthie type>/<id>).
func (m mapper) meta(kind, hid, updated string) obj {
	return obj{}.set("lastUpdated", fhirInstant(updated)).
		set("source", m.source+"#"+kind+"/"+hid).
		set("tag", []any{obj{{"system", TagSystem}, {"code", TagCode}, {"display", "Served by the Healthie facade"}}})
}

func ident(system, value string) obj {
	if value == "" {
		return nil
	}
	return obj{{"system", system}, {"value", value}}
}

func list(items ...obj) []any {
	var out []any
	for _, it := range items {
		if len(it) > 0 {
			out = append(out, it)
		}
	}
	return out
}

// healthieTime reads Healthie's timestamps ("2020-05-08 21:00:00 UTC",
// "... -0400") and ISO 8601.
func healthieTime(s string) (time.Time, bool) {
	for _, layout := range []string{"2006-01-02 15:04:05 MST", "2006-01-02 15:04:05 -0700", time.RFC3339, "2006-01-02 15:04:05"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), true
		}
	}
	return time.Time{}, false
}

func fhirInstant(s string) string {
	if t, ok := healthieTime(s); ok {
		return t.Format(time.RFC3339)
	}
	return ""
}

// fhirDate keeps a YYYY-MM-DD date, dropping anything else.
func fhirDate(s string) string {
	if len(s) >= 10 {
		if _, err := time.Parse("2006-01-02", s[:10]); err == nil {
			return s[:10]
		}
	}
	return ""
}

func fhirGender(g string) string {
	switch strings.ToLower(g) {
	case "male", "m":
		return "male"
	case "female", "f":
		return "female"
	case "other", "non-binary", "nonbinary":
		return "other"
	case "":
		return ""
	}
	return "unknown"
}

func address(line1, line2, city, state, zip, country string) obj {
	var lines []any
	for _, l := range []string{line1, line2} {
		if l != "" {
			lines = append(lines, l)
		}
	}
	return obj{}.set("line", lines).set("city", city).set("state", state).set("postalCode", zip).set("country", country)
}

func telecom(email, phone string) []any {
	return list(
		obj{}.set("system", "email").set("value", email),
		obj{}.set("system", "phone").set("value", phone),
	)
}

func humanName(use, first, last string) obj {
	var given []any
	if first != "" {
		given = []any{first}
	}
	return obj{}.set("use", use).set("family", last).set("given", given)
}

func marshal(o obj) []byte {
	b, _ := json.Marshal(o) // obj of strings, numbers, bools and objs cannot fail
	return b
}

// Patient maps a Healthie client.
func (m mapper) Patient(u *PatientFields) []byte {
	names := list(humanName("usual", u.First_name, u.Last_name))
	if u.Legal_name != "" && u.Legal_name != u.First_name {
		names = append(names, humanName("official", u.Legal_name, u.Last_name))
	}
	var addr []any
	if l := u.Location; l.Line1 != "" || l.City != "" || l.Zip != "" {
		addr = list(address(l.Line1, l.Line2, l.City, l.State, l.Zip, l.Country))
	}
	var gp []any
	if u.Dietitian_id != "" {
		gp = list(m.ref("Practitioner", u.Dietitian_id, ""))
	}
	mrn := ident(IDSystem+"record-identifier", u.Record_identifier)
	if mrn != nil {
		mrn = append(obj{{"type", obj{{"coding", []any{obj{{"system", "http://terminology.hl7.org/CodeSystem/v2-0203"}, {"code", "MR"}}}}}}}, mrn...)
	}
	return marshal(obj{{"resourceType", "Patient"}, {"id", m.id(u.Id)}}.
		set("meta", m.meta("User", u.Id, u.Updated_at)).
		set("identifier", list(ident(IDSystem+"user", u.Id), mrn)).
		set("active", u.Active).
		set("name", names).
		set("telecom", telecom(u.Email, u.Phone_number)).
		set("gender", fhirGender(u.Gender)).
		set("birthDate", fhirDate(u.Dob)).
		set("address", addr).
		set("generalPractitioner", gp))
}

// Practitioner maps a Healthie provider (organization member).
func (m mapper) Practitioner(p *ProviderFields) []byte {
	var qual []any
	if p.Qualifications != "" {
		qual = list(obj{{"code", obj{{"text", p.Qualifications}}}})
	}
	return marshal(obj{{"resourceType", "Practitioner"}, {"id", m.id(p.Id)}}.
		set("meta", m.meta("User", p.Id, p.Updated_at)).
		set("identifier", list(ident(IDSystem+"user", p.Id), ident(NPISystem, p.Npi))).
		set("active", true).
		set("name", list(humanName("usual", p.First_name, p.Last_name))).
		set("telecom", telecom(p.Email, p.Phone_number)).
		set("qualification", qual))
}

// PractitionerRole maps a provider's membership of the organization: one
// role per provider, with the same id as the Practitioner.
func (m mapper) PractitionerRole(p *ProviderFields) []byte {
	name := strings.TrimSpace(p.First_name + " " + p.Last_name)
	var code []any
	if p.Org_role != "" {
		code = list(obj{{"coding", []any{obj{{"system", IDSystem + "org-role"}, {"code", p.Org_role}}}}, {"text", p.Org_role}})
	}
	return marshal(obj{{"resourceType", "PractitionerRole"}, {"id", m.id(p.Id)}}.
		set("meta", m.meta("OrganizationMembership", p.Id, p.Updated_at)).
		set("identifier", list(ident(IDSystem+"user", p.Id), ident(NPISystem, p.Npi))).
		set("active", true).
		set("practitioner", m.ref("Practitioner", p.Id, name)).
		set("organization", m.ref("Organization", p.Organization.Id, p.Organization.Name)).
		set("code", code).
		set("telecom", telecom(p.Email, p.Phone_number)))
}

// Organization maps the practice.
func (m mapper) Organization(o *OrganizationFields) []byte {
	var ein obj
	if o.Tax_id != "" && (o.Tax_id_type == "" || strings.EqualFold(o.Tax_id_type, "EIN")) {
		ein = ident(einSystem, o.Tax_id)
	}
	var addr []any
	if l := o.Location; l.Line1 != "" || l.City != "" {
		addr = list(address(l.Line1, l.Line2, l.City, l.State, l.Zip, l.Country))
	}
	var tel []any
	if o.Phone_number != "" {
		tel = list(obj{{"system", "phone"}, {"value", o.Phone_number}})
	}
	return marshal(obj{{"resourceType", "Organization"}, {"id", m.id(o.Id)}}.
		set("meta", m.meta("Organization", o.Id, "")).
		set("identifier", list(ident(IDSystem+"organization", o.Id), ident(NPISystem, o.Npi), ein)).
		set("active", true).
		set("type", []any{obj{{"coding", []any{obj{{"system", "http://terminology.hl7.org/CodeSystem/organization-type"}, {"code", "prov"}, {"display", "Healthcare Provider"}}}}}}).
		set("name", o.Name).
		set("telecom", tel).
		set("address", addr))
}

// Location maps a Healthie location with its NPI.
func (m mapper) Location(l *LocationFields) []byte {
	return marshal(obj{{"resourceType", "Location"}, {"id", m.id(l.Id)}}.
		set("meta", m.meta("Location", l.Id, "")).
		set("identifier", list(ident(IDSystem+"location", l.Id), ident(NPISystem, l.Npi))).
		set("status", "active").
		set("name", l.Name).
		set("address", address(l.Line1, l.Line2, l.City, l.State, l.Zip, l.Country)))
}

// appointmentStatus maps Healthie's pm_status to Appointment.status.
func appointmentStatus(pm string) string {
	switch pm {
	case "Occurred":
		return "fulfilled"
	case "No-Show":
		return "noshow"
	case "Cancelled", "Re-Scheduled":
		return "cancelled"
	}
	return "booked"
}

// Appointment maps a Healthie appointment; its appointment type becomes the
// serviceType (practice-defined, so not Appointment.appointmentType, which
// is bound to HL7's v2-0276 codes).
func (m mapper) Appointment(a *AppointmentFields) []byte {
	o := obj{{"resourceType", "Appointment"}, {"id", m.id(a.Id)}}.
		set("meta", m.meta("Appointment", a.Id, a.Updated_at))
	if a.Contact_type != "" {
		o = o.set("extension", []any{obj{{"url", ContactTypeExtension}, {"valueString", a.Contact_type}}})
	}
	o = o.set("identifier", list(ident(IDSystem+"appointment", a.Id))).
		set("status", appointmentStatus(a.Pm_status))
	if a.Pm_status == "Re-Scheduled" {
		o = o.set("cancelationReason", obj{{"text", "Re-Scheduled"}})
	}
	if t := a.Appointment_type; t.Id != "" {
		o = o.set("serviceType", []any{obj{}.set("coding", []any{obj{{"system", IDSystem + "appointment-type"}, {"code", t.Id}}.set("display", t.Name)}).set("text", t.Name)})
	}
	o = o.set("description", a.Notes)
	if start, ok := healthieTime(a.Date); ok {
		o = o.set("start", start.Format(time.RFC3339))
		if a.Length > 0 {
			o = o.set("end", start.Add(time.Duration(a.Length)*time.Minute).Format(time.RFC3339)).set("minutesDuration", a.Length)
		}
	}
	o = o.set("created", fhirInstant(a.Created_at))
	parts := list(
		obj{}.set("actor", m.ref("Patient", a.User.Id, a.User.Full_name)).set("required", "required").set("status", "accepted"),
		obj{}.set("actor", m.ref("Practitioner", a.Provider.Id, a.Provider.Full_name)).set("required", "required").set("status", "accepted"),
	)
	if a.Location != "" {
		parts = append(parts, obj{{"actor", obj{{"display", a.Location}}}, {"status", "accepted"}})
	}
	return marshal(o.set("participant", parts))
}

var relationships = map[string]string{"self": "self", "spouse": "spouse", "child": "child", "parent": "parent", "other": "other", "common": "common", "injured": "injured"}

// Coverage maps a patient's Healthie policy; the insurance plan gives the
// payer (payer id as identifier, payer name as display).
func (m mapper) Coverage(p *PolicyFields) []byte {
	status := "active"
	if strings.EqualFold(p.Priority_type, "Inactive") {
		status = "cancelled"
	}
	var rel obj
	if code, ok := relationships[strings.ToLower(p.Holder_relationship)]; ok {
		rel = obj{{"coding", []any{obj{{"system", "http://terminology.hl7.org/CodeSystem/subscriber-relationship"}, {"code", code}}}}}
	} else if p.Holder_relationship != "" {
		rel = obj{{"text", p.Holder_relationship}}
	}
	plan := p.Insurance_plan
	payor := obj{}.set("identifier", ident(IDSystem+"payer-id", plan.Payer_id)).set("display", plan.Payer_name)
	if len(payor) == 0 {
		payor = obj{{"display", "unknown payer"}}
	}
	classType := func(code string) obj {
		return obj{{"coding", []any{obj{{"system", "http://terminology.hl7.org/CodeSystem/coverage-class"}, {"code", code}}}}}
	}
	var classes []any
	if plan.Id != "" {
		classes = append(classes, obj{{"type", classType("plan")}, {"value", plan.Id}}.set("name", firstNonEmpty(p.Name, plan.Name_and_id)))
	}
	if p.Group_num != "" {
		classes = append(classes, obj{{"type", classType("group")}, {"value", p.Group_num}})
	}
	var order any
	switch strings.ToLower(p.Priority_type) {
	case "primary":
		order = 1
	case "secondary":
		order = 2
	case "tertiary":
		order = 3
	}
	memberID := ident(IDSystem+"member-id", p.Num)
	if memberID != nil {
		memberID = append(obj{{"type", obj{{"coding", []any{obj{{"system", "http://terminology.hl7.org/CodeSystem/v2-0203"}, {"code", "MB"}}}}}}}, memberID...)
	}
	return marshal(obj{{"resourceType", "Coverage"}, {"id", m.id(p.Id)}}.
		set("meta", m.meta("Policy", p.Id, p.Updated_at)).
		set("identifier", list(ident(IDSystem+"policy", p.Id), memberID)).
		set("status", status).
		set("subscriberId", p.Num).
		set("beneficiary", m.ref("Patient", p.User_id, "")).
		set("relationship", rel).
		set("period", obj{}.set("start", fhirDate(p.Effective_start)).set("end", fhirDate(p.Effective_end))).
		set("payor", []any{payor}).
		set("class", classes).
		set("order", order))
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func money(s string) obj {
	f, err := strconv.ParseFloat(strings.TrimPrefix(strings.ReplaceAll(s, ",", ""), "$"), 64)
	if err != nil {
		return nil
	}
	return obj{{"value", json.Number(strconv.FormatFloat(f, 'f', -1, 64))}, {"currency", "USD"}}
}

// Claim maps a CMS 1500 (a professional claim) with its ICD-10 diagnoses,
// CPT lines and policies.
func (m mapper) Claim(c *ClaimFields) []byte {
	status := "active"
	if strings.EqualFold(c.Status, "Not Sent") {
		status = "draft"
	}
	var ins []any
	for i, p := range c.Cms1500_policies {
		ins = append(ins, obj{{"sequence", i + 1}, {"focal", i == 0}, {"coverage", m.ref("Coverage", p.Policy_id, "")}})
	}
	if len(ins) == 0 {
		// R4 requires one insurance; a CMS 1500 without a policy is self-pay.
		ins = []any{obj{{"sequence", 1}, {"focal", true}, {"coverage", obj{{"display", "no policy on the CMS 1500 (self-pay)"}}}}}
	}
	var diags []any
	for i, d := range c.Icd_codes_cms1500s {
		diags = append(diags, obj{{"sequence", i + 1}, {"diagnosisCodeableConcept", obj{{"coding", []any{obj{{"system", icd10System}, {"code", d.Icd_code.Code}}.set("display", d.Icd_code.Display_name)}}}}})
	}
	var items []any
	for i, l := range c.Cpt_codes_cms1500s {
		var ptrs []any
		for _, p := range l.Pointers {
			if n, err := strconv.Atoi(p); err == nil && n > 0 {
				ptrs = append(ptrs, n)
			}
		}
		var mods []any
		for _, md := range []string{l.Mod1, l.Mod2, l.Mod3, l.Mod4} {
			if md != "" {
				mods = append(mods, obj{{"coding", []any{obj{{"system", IDSystem + "cpt-modifier"}, {"code", md}}}}})
			}
		}
		it := obj{{"sequence", i + 1}}.set("diagnosisSequence", ptrs).
			set("productOrService", obj{{"coding", []any{obj{{"system", cptSystem}, {"code", l.Cpt_code.Code}}.set("display", l.Cpt_code.Display_name)}}}).
			set("modifier", mods).
			set("servicedDate", fhirDate(firstNonEmpty(l.Service_date, c.Date_of_service))).
			set("locationReference", m.ref("Location", c.Service_location_id, ""))
		if l.Units > 0 {
			it = it.set("quantity", obj{{"value", l.Units}})
		}
		if up := money(l.Fee); up != nil {
			it = it.set("unitPrice", up)
			if l.Units > 0 {
				f, _ := up[0].v.(json.Number).Float64()
				it = it.set("net", obj{{"value", json.Number(strconv.FormatFloat(f*float64(l.Units), 'f', -1, 64))}, {"currency", "USD"}})
			}
		}
		items = append(items, it)
	}
	o := obj{{"resourceType", "Claim"}, {"id", m.id(c.Id)}}.
		set("meta", m.meta("Cms1500", c.Id, c.Updated_at))
	if c.Status != "" {
		o = o.set("extension", []any{obj{{"url", ClaimStatusExtension}, {"valueString", c.Status}}})
	}
	created := fhirInstant(c.Created_at)
	if created == "" {
		created = fhirDate(c.Date_of_service)
	}
	return marshal(o.set("identifier", list(ident(IDSystem+"cms1500", c.Id))).
		set("status", status).
		set("type", obj{{"coding", []any{obj{{"system", "http://terminology.hl7.org/CodeSystem/claim-type"}, {"code", "professional"}}}}}).
		set("use", "claim").
		set("patient", m.ref("Patient", c.Patient_id, "")).
		set("billablePeriod", obj{}.set("start", fhirDate(c.Date_of_service)).set("end", fhirDate(c.Date_of_service))).
		set("created", created).
		set("provider", m.ref("Practitioner", c.Dietitian_id, "")).
		set("priority", obj{{"coding", []any{obj{{"system", "http://terminology.hl7.org/CodeSystem/processpriority"}, {"code", "normal"}}}}}).
		set("facility", m.ref("Location", c.Service_location_id, "")).
		set("diagnosis", diags).
		set("insurance", ins).
		set("item", items).
		set("total", money(c.Total_charge)))
}
