package eligibility

import (
	"fmt"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// Request is an eligibility question in vendor-neutral form, extracted from
// a CoverageEligibilityRequest and the resources it references.
type Request struct {
	// RequestID is the CoverageEligibilityRequest's id.
	RequestID string `json:"requestId"`
	// PayerID is the payer id the route matched.
	PayerID string `json:"payerId"`
	// PayerIDs are the identifier values of the request's insurer and the
	// Coverage's payors, the candidates the router matches.
	PayerIDs []string `json:"payerIds,omitempty"`
	Patient  Person   `json:"patient"`
	// Subscriber is the policy holder when the patient is a dependent.
	Subscriber *Person `json:"subscriber,omitempty"`
	// Relationship is the patient's relationship to the subscriber, a code
	// of http://terminology.hl7.org/CodeSystem/subscriber-relationship
	// (self, spouse, child, other...).
	Relationship string `json:"relationship,omitempty"`
	MemberID     string `json:"memberId,omitempty"`
	GroupNumber  string `json:"groupNumber,omitempty"`
	ProviderNPI  string `json:"providerNpi,omitempty"`
	// ServicedDate is the date of service (YYYY-MM-DD).
	ServicedDate string `json:"servicedDate"`
	Items        []Item `json:"items"`
	// Prior is the vendor's id of the last check for the same member and
	// payer, so a connector can re-verify rather than start afresh.
	Prior string `json:"prior,omitempty"`
	// Unconfirmed, when set, is when a call of this check that creates
	// something at the vendor (Submit's create, a re-verification, a
	// request made by Poll) failed in a way that leaves open whether the
	// vendor carried it out (see Unconfirmed). The check never repeats
	// such a call blindly: a Finder looks first, a WebhookConfirmer waits
	// for the vendor's webhook, other vendors' checks fail.
	Unconfirmed time.Time `json:"unconfirmed,omitzero"`
}

// Person is a patient or subscriber.
type Person struct {
	FirstName string `json:"firstName,omitempty"`
	LastName  string `json:"lastName,omitempty"`
	// BirthDate is YYYY-MM-DD.
	BirthDate string `json:"birthDate,omitempty"`
	// Gender is the FHIR administrative gender (male, female, other, unknown).
	Gender string `json:"gender,omitempty"`
	// State is the two-letter US state of the person's address.
	State string `json:"state,omitempty"`
}

// Item is one service asked about.
type Item struct {
	// ServiceType is an X12 service type code (from item.category).
	ServiceType string `json:"serviceType,omitempty"`
	// PlaceOfService is a CMS place of service code ("02", "10", "11").
	PlaceOfService string `json:"placeOfService,omitempty"`
	// Specialty is the code of the provider's specialty.
	Specialty string `json:"specialty,omitempty"`
}

// Field names a piece of a Request that a vendor or payer may require.
type Field string

// The fields.
const (
	FieldFirstName      Field = "firstName"
	FieldLastName       Field = "lastName"
	FieldBirthDate      Field = "birthDate"
	FieldGender         Field = "gender"
	FieldState          Field = "state"
	FieldMemberID       Field = "memberId"
	FieldGroupNumber    Field = "groupNumber"
	FieldProviderNPI    Field = "providerNpi"
	FieldRelationship   Field = "relationship"
	FieldPlaceOfService Field = "placeOfService"
	FieldSpecialty      Field = "specialty"
	FieldServiceType    Field = "serviceType"
)

// fieldPaths says where in the request's resources a client supplies each
// field; 422 answers name these paths.
var fieldPaths = map[Field]string{
	FieldFirstName:      "Patient.name.given",
	FieldLastName:       "Patient.name.family",
	FieldBirthDate:      "Patient.birthDate",
	FieldGender:         "Patient.gender",
	FieldState:          "Patient.address.state",
	FieldMemberID:       "Coverage.subscriberId",
	FieldGroupNumber:    "Coverage.class.where(type.coding.code='group').value",
	FieldProviderNPI:    "CoverageEligibilityRequest.provider.identifier.where(system='" + NPISystem + "')",
	FieldRelationship:   "Coverage.relationship",
	FieldPlaceOfService: "CoverageEligibilityRequest.item.facility.resolve().type.coding.where(system='" + POSSystem + "')",
	FieldSpecialty:      "CoverageEligibilityRequest.item.provider.resolve().specialty",
	FieldServiceType:    "CoverageEligibilityRequest.item.category",
}

// Path returns where the client supplies f.
func (f Field) Path() string { return fieldPaths[f] }

// Has reports whether req carries a value for f.
func (req *Request) Has(f Field) bool {
	switch f {
	case FieldFirstName:
		return req.Patient.FirstName != ""
	case FieldLastName:
		return req.Patient.LastName != ""
	case FieldBirthDate:
		return req.Patient.BirthDate != ""
	case FieldGender:
		return req.Patient.Gender != ""
	case FieldState:
		return req.Patient.State != ""
	case FieldMemberID:
		return req.MemberID != ""
	case FieldGroupNumber:
		return req.GroupNumber != ""
	case FieldProviderNPI:
		return req.ProviderNPI != ""
	case FieldRelationship:
		return req.Relationship != ""
	case FieldPlaceOfService, FieldSpecialty, FieldServiceType:
		if len(req.Items) == 0 {
			return false
		}
		for _, it := range req.Items {
			v := map[Field]string{FieldPlaceOfService: it.PlaceOfService, FieldSpecialty: it.Specialty, FieldServiceType: it.ServiceType}[f]
			if v == "" {
				return false
			}
		}
		return true
	}
	return false
}

// Problem is a field a request lacks or carries a value a vendor cannot
// take.
type Problem struct {
	Field   Field
	Message string
}

// Missing returns a Problem for each of fields req lacks, saying who
// requires it.
func Missing(req *Request, who string, fields ...Field) []Problem {
	var out []Problem
	for _, f := range fields {
		if !req.Has(f) {
			out = append(out, Problem{Field: f, Message: fmt.Sprintf("%s requires %s (%s)", who, f, f.Path())})
		}
	}
	return out
}

// Code systems and identifier systems read from requests.
const (
	NPISystem          = "http://hl7.org/fhir/sid/us-npi"
	POSSystem          = "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set"
	ServiceTypeSystem  = "https://x12.org/codes/service-type-codes"
	identifierTypeV2   = "http://terminology.hl7.org/CodeSystem/v2-0203"
	coverageClassGroup = "group"
)

// extractor reads a CoverageEligibilityRequest and the resources it
// references: contained ones ("#id"), stored ones ("Patient/123"), and
// logical references by identifier. Stored ones are read with the
// requester's rights (the Principal in tx's context), never the store's.
type extractor struct {
	tx     *store.Tx
	pol    *authz.Policy
	p      *authz.Principal
	doc    map[string]any
	issues []errs.Issue
	// forbidden is the first reference the requester's scopes do not let
	// it read at all (its type); the request is refused with it.
	forbidden error
}

func (x *extractor) fail(path, format string, args ...any) {
	x.issues = append(x.issues, errs.Issue{Code: "required", Path: path, Message: fmt.Sprintf(format, args...)})
}

// resolve returns the resource a Reference points at, or nil. Logical
// references (identifier only) resolve to nil; use their identifier.
func (x *extractor) resolve(ref map[string]any, path string) map[string]any {
	r, _ := ref["reference"].(string)
	if r == "" {
		return nil
	}
	if id, ok := strings.CutPrefix(r, "#"); ok {
		for _, c := range arr(x.doc["contained"]) {
			if m, ok := c.(map[string]any); ok && m["id"] == id {
				return m
			}
		}
		x.fail(path, "the contained resource %q is not in CoverageEligibilityRequest.contained", r)
		return nil
	}
	typ, id, ok := strings.Cut(r, "/")
	if !ok || strings.Contains(id, "/") || strings.Contains(r, "://") {
		x.fail(path, "reference %q must be contained (#id) or relative (Type/id)", r)
		return nil
	}
	if err := x.pol.Need(x.p, typ, authz.Read); err != nil {
		if x.forbidden == nil {
			x.forbidden = err
		}
		return nil
	}
	// What the requester may not see answers exactly as what does not
	// exist: the vendor is sent nothing, and the requester learns nothing.
	v, err := x.pol.Current(x.tx, x.p, typ, id)
	if err != nil {
		x.fail(path, "%s is not a resource on this server", r)
		return nil
	}
	m, err := decodeMap(v.JSON)
	if err != nil {
		x.fail(path, "%s could not be read", r)
		return nil
	}
	return m
}

// ExtractRequest builds the Request of a CoverageEligibilityRequest, and an
// issue for each part that cannot be read. Missing optional data is left
// empty; the connectors say what they require. The resources it references
// are read with the rights of the request in tx's context
// (authz.FromContext), as pol decides: one the requester may not see is
// reported exactly as one that does not exist; one whose type the
// requester's scopes do not let it read at all makes the error a
// Permission error, returned alone.
func ExtractRequest(tx *store.Tx, pol *authz.Policy, id string, doc map[string]any, today time.Time) (*Request, []errs.Issue, error) {
	x := &extractor{tx: tx, pol: pol, p: authz.FromContext(tx.Context()), doc: doc}
	req := &Request{RequestID: id}

	if p := obj(doc["patient"]); p != nil {
		if pat := x.resolve(p, "CoverageEligibilityRequest.patient"); pat != nil {
			req.Patient = person(pat)
		}
	} else {
		x.fail("CoverageEligibilityRequest.patient", "the request names no patient")
	}

	// Coverage: the focal insurance, else the first.
	var cov map[string]any
	ins := arr(doc["insurance"])
	var chosen map[string]any
	for _, i := range ins {
		if m := obj(i); m != nil && m["focal"] == true {
			chosen = m
			break
		}
	}
	if chosen == nil && len(ins) > 0 {
		chosen = obj(ins[0])
	}
	if chosen != nil {
		if c := obj(chosen["coverage"]); c != nil {
			cov = x.resolve(c, "CoverageEligibilityRequest.insurance.coverage")
		}
	}
	if cov == nil && len(x.issues) == 0 {
		x.fail("CoverageEligibilityRequest.insurance.coverage", "the request names no Coverage (insurance.coverage), so there is no member id")
	}
	// The Coverage must be the patient's: a request filed under one
	// patient must not carry (and file under them the answer about)
	// another person's coverage.
	if cov != nil {
		want := str(obj(doc["patient"])["reference"])
		if have := str(obj(cov["beneficiary"])["reference"]); have != "" && want != "" && have != want {
			x.fail("Coverage.beneficiary", "the Coverage's beneficiary %s is not the request's patient %s", have, want)
		}
	}
	var payerRefs []map[string]any
	if ref := obj(doc["insurer"]); ref != nil {
		payerRefs = append(payerRefs, ref)
	}
	if cov != nil {
		req.MemberID = str(cov["subscriberId"])
		if req.MemberID == "" {
			for _, idf := range arr(cov["identifier"]) {
				m := obj(idf)
				if m != nil && hasCoding(obj(m["type"]), identifierTypeV2, "MB") {
					req.MemberID = str(m["value"])
				}
			}
		}
		for _, c := range arr(obj(cov["relationship"])["coding"]) {
			if code := str(obj(c)["code"]); code != "" {
				req.Relationship = code
				break
			}
		}
		for _, cl := range arr(cov["class"]) {
			m := obj(cl)
			if m != nil && hasCoding(obj(m["type"]), "", coverageClassGroup) {
				req.GroupNumber = str(m["value"])
			}
		}
		if req.Relationship != "" && req.Relationship != "self" {
			if s := obj(cov["subscriber"]); s != nil {
				if sub := x.resolve(s, "Coverage.subscriber"); sub != nil {
					p := person(sub)
					req.Subscriber = &p
				}
			}
		}
		for _, p := range arr(cov["payor"]) {
			if m := obj(p); m != nil {
				payerRefs = append(payerRefs, m)
			}
		}
	}
	// Payer ids: identifiers of the insurer and payor Organizations, for
	// the router to match.
	var payerIDs []string
	for _, ref := range payerRefs {
		if idf := obj(ref["identifier"]); idf != nil {
			payerIDs = append(payerIDs, str(idf["value"]))
		}
		if org := x.resolve(ref, "CoverageEligibilityRequest.insurer"); org != nil {
			for _, idf := range arr(org["identifier"]) {
				payerIDs = append(payerIDs, str(obj(idf)["value"]))
			}
		}
	}
	req.PayerIDs = nonEmpty(payerIDs)

	var specialty string
	if p := obj(doc["provider"]); p != nil {
		req.ProviderNPI, specialty = x.provider(p, "CoverageEligibilityRequest.provider")
	}

	req.ServicedDate = str(doc["servicedDate"])
	if req.ServicedDate == "" {
		req.ServicedDate = str(obj(doc["servicedPeriod"])["start"])
	}
	if req.ServicedDate == "" {
		req.ServicedDate = today.UTC().Format("2006-01-02")
	}
	if len(req.ServicedDate) > 10 {
		req.ServicedDate = req.ServicedDate[:10]
	}

	for i, it := range arr(doc["item"]) {
		m := obj(it)
		if m == nil {
			continue
		}
		item := Item{Specialty: specialty}
		for _, c := range arr(obj(m["category"])["coding"]) {
			if code := str(obj(c)["code"]); code != "" {
				item.ServiceType = code
				break
			}
		}
		if f := obj(m["facility"]); f != nil {
			if loc := x.resolve(f, fmt.Sprintf("CoverageEligibilityRequest.item[%d].facility", i)); loc != nil {
				for _, t := range arr(loc["type"]) {
					if code := codeIn(obj(t), POSSystem); code != "" {
						item.PlaceOfService = code
					}
				}
			}
		}
		if p := obj(m["provider"]); p != nil {
			npi, spec := x.provider(p, fmt.Sprintf("CoverageEligibilityRequest.item[%d].provider", i))
			if spec != "" {
				item.Specialty = spec
			}
			if req.ProviderNPI == "" {
				req.ProviderNPI = npi
			}
		}
		req.Items = append(req.Items, item)
	}
	return req, x.issues, x.forbidden
}

// provider reads an NPI and a specialty from a reference to a
// Practitioner, PractitionerRole or Organization (or a logical reference
// by NPI).
func (x *extractor) provider(ref map[string]any, path string) (npi, specialty string) {
	if idf := obj(ref["identifier"]); idf != nil && str(idf["system"]) == NPISystem {
		npi = str(idf["value"])
	}
	res := x.resolve(ref, path)
	if res == nil {
		return npi, ""
	}
	if n := npiOf(res); n != "" {
		npi = n
	}
	if res["resourceType"] == "PractitionerRole" {
		for _, s := range arr(res["specialty"]) {
			for _, c := range arr(obj(s)["coding"]) {
				if code := str(obj(c)["code"]); code != "" && specialty == "" {
					specialty = code
				}
			}
		}
		if npi == "" {
			for _, k := range []string{"practitioner", "organization"} {
				if r := obj(res[k]); r != nil {
					if p := x.resolve(r, path+"."+k); p != nil {
						if n := npiOf(p); n != "" && npi == "" {
							npi = n
						}
					}
				}
			}
		}
	}
	return npi, specialty
}

func npiOf(res map[string]any) string {
	for _, idf := range arr(res["identifier"]) {
		m := obj(idf)
		if str(m["system"]) == NPISystem {
			return str(m["value"])
		}
	}
	return ""
}

func person(res map[string]any) Person {
	var p Person
	names := arr(res["name"])
	var name map[string]any
	for _, n := range names {
		if m := obj(n); m != nil && (name == nil || m["use"] == "official") {
			name = m
		}
	}
	if name != nil {
		p.LastName = str(name["family"])
		if g := arr(name["given"]); len(g) > 0 {
			p.FirstName = str(g[0])
		}
	}
	p.BirthDate = str(res["birthDate"])
	p.Gender = str(res["gender"])
	for _, a := range arr(res["address"]) {
		if s := str(obj(a)["state"]); s != "" {
			p.State = strings.ToUpper(s)
			break
		}
	}
	return p
}

func hasCoding(cc map[string]any, system, code string) bool {
	for _, c := range arr(cc["coding"]) {
		m := obj(c)
		if str(m["code"]) == code && (system == "" || str(m["system"]) == system) {
			return true
		}
	}
	return false
}

func codeIn(cc map[string]any, system string) string {
	for _, c := range arr(cc["coding"]) {
		m := obj(c)
		if str(m["system"]) == system {
			return str(m["code"])
		}
	}
	return ""
}

func nonEmpty(in []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range in {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func obj(v any) map[string]any { m, _ := v.(map[string]any); return m }
func arr(v any) []any          { a, _ := v.([]any); return a }
func str(v any) string         { s, _ := v.(string); return s }
