package mdm

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
)

// Sensitive data and the member's consent.
//
// A resource is sensitive when it carries a sensitivity label:
//
//   - in meta.security, a code of HL7 v3 ActCode naming a sensitive kind of
//     information (SensitivityCodes: ETH, GDIS, HIV, MST, SCA, SDV, SEX,
//     STD, TBOO, BH, MH, PSY, PSYTHPN, SUD, OPIOIDUD), or the v3
//     Confidentiality codes R (restricted) or V (very restricted);
//   - inferred from its content, for data nobody labelled: an ICD-10(-CM)
//     code anywhere in the resource (a Condition's code, a claim's or EOB's
//     diagnosis) in F10-F19 (substance use, labelled ETH), the rest of
//     chapter F (mental and behavioural, PSY), B20 or Z21 (HIV), or
//     A50-A64 (sexually transmitted infections, STD).
//
// Codes in other systems (SNOMED CT, LOINC) are not interpreted: label the
// data where it is written when it must be protected.
//
// A member's consents are the Consent resources of their compartment that
// are in force now: status active, scope patient-privacy, and a
// provision.period (if any) that includes today. Together they withhold:
//
//   - everything, when one denies at its top level (provision.type deny);
//   - every sensitive resource, when one names the Da Vinci HRex policy
//     "#regular" (non-sensitive data only) — "#sensitive" releases all;
//   - for each nested provision of type deny: the resources with one of its
//     securityLabel codes, of one of its classes (resource types), or named
//     in its data; a nested deny that says none of these withholds
//     everything, since what it meant cannot be told.
//
// Consents combine: whatever one withholds is withheld.

// The code systems of sensitivity labels and inferred diagnoses.
const (
	ActCodeSystem         = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
	ConfidentialitySystem = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
	ICD10CMSystem         = "http://hl7.org/fhir/sid/icd-10-cm"
	ICD10System           = "http://hl7.org/fhir/sid/icd-10"
)

// The HRex consent policies of $member-match.
const (
	PolicyRegular   = "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#regular"
	PolicySensitive = "http://hl7.org/fhir/us/davinci-hrex/StructureDefinition-hrex-consent.html#sensitive"
)

// SensitivityCodes are the v3 ActCode information sensitivity codes that
// make a resource sensitive, with what they mean.
var SensitivityCodes = map[string]string{
	"ETH":      "substance abuse information",
	"GDIS":     "genetic disease information",
	"HIV":      "HIV/AIDS information",
	"MST":      "military sexual trauma information",
	"SCA":      "sickle cell anemia information",
	"SDV":      "sexual assault, abuse or domestic violence information",
	"SEX":      "sexuality and reproductive health information",
	"STD":      "sexually transmitted disease information",
	"TBOO":     "taboo information",
	"BH":       "behavioral health information",
	"MH":       "mental health information",
	"PSY":      "psychiatry disorder information",
	"PSYTHPN":  "psychotherapy note",
	"SUD":      "substance use disorder information",
	"OPIOIDUD": "opioid use disorder information",
}

// systemIs reports whether a coding system is the named HL7 v3 code system
// under any of its names (terminology.hl7.org URL, the older hl7.org/fhir
// form, or its OID).
func systemIs(system, canonical string) bool {
	switch canonical {
	case ActCodeSystem:
		return system == ActCodeSystem || system == "http://hl7.org/fhir/v3/ActCode" || system == "urn:oid:2.16.840.1.113883.5.4"
	case ConfidentialitySystem:
		return system == ConfidentialitySystem || system == "http://hl7.org/fhir/v3/Confidentiality" || system == "urn:oid:2.16.840.1.113883.5.25"
	}
	return system == canonical
}

// Labels returns the sensitivity labels of a resource (decoded JSON):
// those in meta.security and those inferred from its ICD-10 codes, sorted,
// without repeats. A resource is sensitive when there is any.
func Labels(resource map[string]any) []string {
	set := map[string]bool{}
	meta, _ := resource["meta"].(map[string]any)
	security, _ := meta["security"].([]any)
	for _, s := range security {
		c, _ := s.(map[string]any)
		system, _ := c["system"].(string)
		code, _ := c["code"].(string)
		switch {
		case systemIs(system, ActCodeSystem) && SensitivityCodes[code] != "":
			set[code] = true
		case systemIs(system, ConfidentialitySystem) && (code == "R" || code == "V"):
			set[code] = true
		}
	}
	for k, v := range resource {
		if k != "meta" {
			inferLabels(v, set)
		}
	}
	out := make([]string, 0, len(set))
	for l := range set {
		out = append(out, l)
	}
	sort.Strings(out)
	return out
}

// inferLabels adds the labels of the ICD-10 codings found in v.
func inferLabels(v any, set map[string]bool) {
	switch v := v.(type) {
	case map[string]any:
		if system, _ := v["system"].(string); system == ICD10CMSystem || system == ICD10System {
			if code, _ := v["code"].(string); code != "" {
				if l := icd10Label(code); l != "" {
					set[l] = true
				}
			}
		}
		for _, x := range v {
			inferLabels(x, set)
		}
	case []any:
		for _, x := range v {
			inferLabels(x, set)
		}
	}
}

// icd10Label maps an ICD-10 code to the sensitivity label of its category,
// "" when it has none.
func icd10Label(code string) string {
	code = strings.ToUpper(strings.TrimSpace(code))
	if len(code) < 3 {
		return ""
	}
	cat := code[:3]
	switch {
	case cat[0] == 'F' && cat >= "F10" && cat <= "F19":
		return "ETH"
	case cat[0] == 'F' && cat[1] >= '0' && cat[1] <= '9':
		return "PSY"
	case cat == "B20" || cat == "Z21":
		return "HIV"
	case cat >= "A50" && cat <= "A64":
		return "STD"
	}
	return ""
}

// Policy is what a member's consents in force withhold from $everything.
type Policy struct {
	// All: nothing is released.
	All bool
	// Sensitive: resources with any sensitivity label are withheld.
	Sensitive bool
	// Labels, Types and Refs: resources with one of these labels, of one
	// of these types, or these very resources ("Type/id") are withheld.
	Labels, Types, Refs map[string]bool
	// Consents are the ids of the Consents the policy comes from.
	Consents []string
}

// Empty reports whether the policy withholds nothing.
func (p *Policy) Empty() bool {
	return !p.All && !p.Sensitive && len(p.Labels) == 0 && len(p.Types) == 0 && len(p.Refs) == 0
}

// Withholds reports whether the policy keeps back the resource typ/id with
// decoded content resource.
func (p *Policy) Withholds(typ, id string, resource map[string]any) bool {
	if p.All || p.Types[typ] || p.Refs[typ+"/"+id] {
		return true
	}
	if !p.Sensitive && len(p.Labels) == 0 {
		return false
	}
	labels := Labels(resource)
	if p.Sensitive && len(labels) > 0 {
		return true
	}
	return slices.ContainsFunc(labels, func(l string) bool { return p.Labels[l] })
}

// ConsentPolicy reads the consents of Patient/patient in force at now and
// combines what they withhold (see the rules above).
func ConsentPolicy(tx *store.Tx, patient string, now time.Time) (*Policy, error) {
	p := &Policy{Labels: map[string]bool{}, Types: map[string]bool{}, Refs: map[string]bool{}}
	ids := tx.CompartmentIDs("Consent", patient)
	vs, err := tx.ReadCurrent("Consent", ids)
	if err != nil {
		return nil, err
	}
	for _, v := range vs {
		c, err := decode(v.JSON)
		if err != nil {
			return nil, fmt.Errorf("mdm: Consent/%s: %w", v.ID, err)
		}
		if !inForce(c, now) {
			continue
		}
		p.Consents = append(p.Consents, v.ID)
		p.add(c)
	}
	return p, nil
}

// inForce: active, about privacy (disclosure), within its period.
func inForce(c map[string]any, now time.Time) bool {
	if c["status"] != "active" || !hasCoding(c["scope"], "http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy") {
		return false
	}
	prov, _ := c["provision"].(map[string]any)
	period, _ := prov["period"].(map[string]any)
	if start, _ := period["start"].(string); start != "" {
		if lo, _, err := search.DateRange(start); err == nil && now.UnixMilli() < lo {
			return false
		}
	}
	if end, _ := period["end"].(string); end != "" {
		if _, hi, err := search.DateRange(end); err == nil && now.UnixMilli() > hi {
			return false
		}
	}
	return true
}

func (p *Policy) add(c map[string]any) {
	policies, _ := c["policy"].([]any)
	for _, raw := range policies {
		pol, _ := raw.(map[string]any)
		if pol["uri"] == PolicyRegular {
			p.Sensitive = true
		}
	}
	prov, _ := c["provision"].(map[string]any)
	if prov["type"] == "deny" {
		p.All = true
	}
	nested, _ := prov["provision"].([]any)
	for _, raw := range nested {
		n, _ := raw.(map[string]any)
		if n["type"] != "deny" {
			continue
		}
		said := false
		labels, _ := n["securityLabel"].([]any)
		for _, l := range labels {
			lm, _ := l.(map[string]any)
			if code, _ := lm["code"].(string); code != "" {
				p.Labels[code] = true
				said = true
			}
		}
		classes, _ := n["class"].([]any)
		for _, cl := range classes {
			cm, _ := cl.(map[string]any)
			if code, _ := cm["code"].(string); code != "" {
				p.Types[code] = true
				said = true
			}
		}
		data, _ := n["data"].([]any)
		for _, d := range data {
			dm, _ := d.(map[string]any)
			ref, _ := dm["reference"].(map[string]any)
			if r, _ := ref["reference"].(string); r != "" {
				p.Refs[search.NormalizeReference(r, "")] = true
				said = true
			}
		}
		if !said {
			p.All = true
		}
	}
}

// hasCoding reports whether a CodeableConcept has system|code.
func hasCoding(cc any, system, code string) bool {
	m, _ := cc.(map[string]any)
	codings, _ := m["coding"].([]any)
	for _, raw := range codings {
		c, _ := raw.(map[string]any)
		if c["system"] == system && c["code"] == code {
			return true
		}
	}
	return false
}

// Withhold is the fhir.EverythingOptions.Withhold of the member's
// consents: it reads Patient/patient's consents in force and returns the
// test of what they keep back (nil when nothing).
func Withhold(tx *store.Tx, patient string) (func(v *store.Version) bool, error) {
	p, err := ConsentPolicy(tx, patient, time.Now())
	if err != nil {
		return nil, err
	}
	if p.Empty() {
		return nil, nil
	}
	return func(v *store.Version) bool {
		var m map[string]any
		if p.All || p.Types[v.Type] || p.Refs[v.Type+"/"+v.ID] {
			return true
		}
		if err := json.Unmarshal(v.JSON, &m); err != nil {
			return true // unreadable: do not release what cannot be judged
		}
		return p.Withholds(v.Type, v.ID, m)
	}, nil
}

// RequesterSource is the meta.source $member-match gives the Consent it
// stores for a requester (the token's subject).
func RequesterSource(requester string) string {
	return "urn:p2pserver:requester:" + url.PathEscape(requester)
}

// ConsentHolds reports whether Patient/patient's consent to share with
// requester (the subject $member-match was called with; "" for any) still
// holds at now: a Consent $member-match stored for that requester is in
// force (active, patient-privacy, within its period) and no consent in
// force withholds everything (a deny, a revocation). PDex STU 2.1 asks
// for this at each export ("Consent SHALL be evaluated at the time of the
// data request"). reason says why not, for the export's error file.
func ConsentHolds(tx *store.Tx, patient, requester string, now time.Time) (ok bool, reason string, err error) {
	vs, err := tx.ReadCurrent("Consent", tx.CompartmentIDs("Consent", patient))
	if err != nil {
		return false, "", err
	}
	found := false
	pol := &Policy{Labels: map[string]bool{}, Types: map[string]bool{}, Refs: map[string]bool{}}
	for _, v := range vs {
		c, err := decode(v.JSON)
		if err != nil {
			return false, "", fmt.Errorf("mdm: Consent/%s: %w", v.ID, err)
		}
		if !inForce(c, now) {
			continue
		}
		pol.add(c)
		meta, _ := c["meta"].(map[string]any)
		if !hasTag(meta, TagSystem, TagMemberMatch) {
			continue
		}
		if src, _ := meta["source"].(string); requester == "" || src == RequesterSource(requester) {
			found = true
		}
	}
	switch {
	case !found:
		return false, "the member's consent to share their data with this payer is not in force (expired, revoked or never given)", nil
	case pol.All:
		return false, "the member's consent now denies sharing their data", nil
	}
	return true, "", nil
}

// hasTag reports whether meta carries the tag system|code.
func hasTag(meta map[string]any, system, code string) bool {
	tags, _ := meta["tag"].([]any)
	for _, raw := range tags {
		t, _ := raw.(map[string]any)
		if t["system"] == system && t["code"] == code {
			return true
		}
	}
	return false
}
