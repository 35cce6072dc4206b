package bulk

import (
	"slices"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/fhir/fhirjson"
	"github.com/p2pserver/p2pserver/fhir/search"
)

// The payer-to-payer scope (PDex STU 2.1 "Payer-to-Payer Exchange (bulk)",
// $davinci-data-export with exportType hl7.fhir.us.davinci-pdex#payertopayer):
//
//   - the types sent are the US Core (USCDI) clinical types, claims and
//     encounters (ExplanationOfBenefit, Encounter), the member's Patient
//     and Coverage, and the Provenance of what is sent (P2PTypes); the
//     financial resources of a payer (ClaimResponse, PaymentReconciliation,
//     PaymentNotice, Invoice, Account) and its administrative ones are not;
//   - "health plans SHALL limit the data exchanged to data with a service
//     date no earlier than 5 years prior to the date of the data request":
//     a resource whose latest date of service (serviceDates) is older than
//     five years before the kick-off is left out; one without a date of
//     service is sent. And "if the _since parameter is earlier than five
//     years before the transaction request the date/time SHALL be
//     overridden and set to five years before": _since (meta.lastUpdated)
//     never goes further back than that;
//   - claims without financial data, as the CARIN Blue Button
//     non-financial (Basis) profiles define them: an ExplanationOfBenefit
//     loses its totals, payment, benefit balances, adjudications (which
//     carry the provider's remittance and the member's cost-sharing:
//     copay, coinsurance, deductible) and item amounts; a Coverage loses
//     costToBeneficiary (the member's cost-sharing);
//   - prior authorizations (ExplanationOfBenefit with use
//     preauthorization, the PDex Prior Authorization profile): those
//     pending or active, and those whose status changed (meta.lastUpdated)
//     in the last 12 months; never a drug (pharmacy) prior authorization
//     nor a denied one.

// P2PTypes are the types a payer-to-payer export sends, in the order of
// its files.
var P2PTypes = []string{
	"Patient", "Coverage", "AllergyIntolerance", "CarePlan", "CareTeam", "Condition", "Device",
	"DiagnosticReport", "DocumentReference", "Encounter", "ExplanationOfBenefit", "Goal",
	"Immunization", "MedicationDispense", "MedicationRequest", "Observation", "Procedure",
	"QuestionnaireResponse", "RelatedPerson", "ServiceRequest", "Specimen", "Provenance",
}

// serviceDates are the elements that hold a resource's date of service,
// by type: dateTime, date, instant or Period values (a Period counts by
// its end, or its start when open).
var serviceDates = map[string][]string{
	"AllergyIntolerance":    {"recordedDate", "onsetDateTime", "onsetPeriod", "lastOccurrence"},
	"CarePlan":              {"period", "created"},
	"CareTeam":              {"period"},
	"Condition":             {"recordedDate", "onsetDateTime", "onsetPeriod", "abatementDateTime", "abatementPeriod"},
	"Coverage":              {"period"},
	"DiagnosticReport":      {"effectiveDateTime", "effectivePeriod", "issued"},
	"DocumentReference":     {"date", "context.period"},
	"Encounter":             {"period"},
	"ExplanationOfBenefit":  {"billablePeriod", "created", "item.servicedDate", "item.servicedPeriod"},
	"Goal":                  {"startDate", "statusDate"},
	"Immunization":          {"occurrenceDateTime", "recorded"},
	"MedicationDispense":    {"whenHandedOver", "whenPrepared"},
	"MedicationRequest":     {"authoredOn"},
	"Observation":           {"effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"},
	"Procedure":             {"performedDateTime", "performedPeriod"},
	"QuestionnaireResponse": {"authored"},
	"ServiceRequest":        {"authoredOn", "occurrenceDateTime", "occurrencePeriod"},
	"Specimen":              {"receivedTime", "collection.collectedDateTime", "collection.collectedPeriod"},
}

// latestService returns the latest date of service of a resource (as
// epoch milliseconds, the end of the instant's precision) and whether it
// has one.
func latestService(typ string, res map[string]any) (int64, bool) {
	var best int64
	found := false
	for _, path := range serviceDates[typ] {
		for _, v := range valuesAt(res, strings.Split(path, ".")) {
			for _, s := range dateStrings(v) {
				if _, hi, err := search.DateRange(s); err == nil && (!found || hi > best) {
					best, found = hi, true
				}
			}
		}
	}
	return best, found
}

// valuesAt follows path through objects and arrays.
func valuesAt(v any, path []string) []any {
	if len(path) == 0 {
		if list, ok := v.([]any); ok {
			return list
		}
		return []any{v}
	}
	switch x := v.(type) {
	case map[string]any:
		next, ok := x[path[0]]
		if !ok {
			return nil
		}
		return valuesAt(next, path[1:])
	case []any:
		var out []any
		for _, e := range x {
			out = append(out, valuesAt(e, path)...)
		}
		return out
	}
	return nil
}

// dateStrings returns the date strings of a date value or a Period (its
// end, or its start when it has no end).
func dateStrings(v any) []string {
	switch x := v.(type) {
	case string:
		return []string{x}
	case map[string]any:
		if end, _ := x["end"].(string); end != "" {
			return []string{end}
		}
		if start, _ := x["start"].(string); start != "" {
			return []string{start}
		}
	}
	return nil
}

// The CARIN BB financial elements of an ExplanationOfBenefit, left out of
// what is sent to another payer.
var (
	eobFinancial  = []string{"total", "payment", "benefitBalance", "adjudication", "benefitPeriod"}
	itemFinancial = []string{"adjudication", "net", "unitPrice", "factor"}
)

// priorAuth reports whether an ExplanationOfBenefit is a prior
// authorization (PDex Prior Authorization: use preauthorization).
func priorAuth(res map[string]any) bool { return res["use"] == "preauthorization" }

// PDex and the X12 306 review action codes a prior authorization decision
// carries (Da Vinci PAS extension reviewAction, or the adjudication
// category of the decision).
const (
	reviewActionExt  = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/extension-reviewAction"
	reviewActionCode = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/extension-reviewActionCode"
)

// denied reports whether a prior authorization was denied: a review
// action A3 (X12 306 "not certified") on an item or the header, or an
// adjudication or reason saying denied.
func denied(res map[string]any) bool {
	if slices.Contains(reviewActions(res), "A3") {
		return true
	}
	hit := false
	walk(res, func(m map[string]any) {
		if cat, ok := m["category"].(map[string]any); ok && (codes(cat, "denied") || codes(cat, "denial")) {
			hit = true
		}
		if reason, ok := m["reason"].(map[string]any); ok && codes(reason, "denied") {
			hit = true
		}
	})
	return hit
}

// reviewActions returns the codes of the Da Vinci PAS review action
// extensions anywhere in res (reviewAction, with its code sub-extension,
// or reviewActionCode).
func reviewActions(res map[string]any) []string {
	var out []string
	walk(res, func(m map[string]any) {
		if url, _ := m["url"].(string); url != reviewActionExt && url != reviewActionCode {
			return
		}
		walk(m, func(inner map[string]any) {
			if cc, ok := inner["valueCodeableConcept"].(map[string]any); ok {
				list, _ := cc["coding"].([]any)
				for _, raw := range list {
					c, _ := raw.(map[string]any)
					if code, _ := c["code"].(string); code != "" {
						out = append(out, code)
					}
				}
			}
		})
	})
	return out
}

// drug reports whether a prior authorization is for a drug: its type is
// pharmacy (claim-type), or it has a Medication product.
func drug(res map[string]any) bool {
	if t, ok := res["type"].(map[string]any); ok && codes(t, "pharmacy") {
		return true
	}
	for _, it := range valuesAt(res, []string{"item", "productOrService", "coding"}) {
		c, _ := it.(map[string]any)
		if sys, _ := c["system"].(string); strings.Contains(sys, "ndc") || strings.Contains(sys, "rxnorm") {
			return true
		}
	}
	return false
}

// pending reports whether a prior authorization is still pending: outcome
// queued or partial (PDex: the decision is not final), or a review action
// A4 (pended).
func pending(res map[string]any) bool {
	if o := res["outcome"]; o == "queued" || o == "partial" {
		return true
	}
	return slices.Contains(reviewActions(res), "A4")
}

// codes reports whether a CodeableConcept has a coding with one of these
// codes (any system).
func codes(cc map[string]any, want ...string) bool {
	list, _ := cc["coding"].([]any)
	for _, raw := range list {
		c, _ := raw.(map[string]any)
		if code, _ := c["code"].(string); slices.Contains(want, code) {
			return true
		}
	}
	return false
}

// walk calls fn with every object inside v.
func walk(v any, fn func(map[string]any)) {
	switch x := v.(type) {
	case map[string]any:
		fn(x)
		for _, e := range x {
			walk(e, fn)
		}
	case []any:
		for _, e := range x {
			walk(e, fn)
		}
	}
}

// p2pKeep applies the payer-to-payer scope to one resource of typ,
// decoded (res, only read): false when it is not sent. What a resource
// sent leaves out is p2pStrip's. now is the kick-off time, lastUpdated
// the resource's.
func p2pKeep(typ string, res map[string]any, spec *ExportSpec, now, lastUpdated time.Time) bool {
	if hi, ok := latestService(typ, res); ok && hi < spec.ServiceFloor.UnixMilli() {
		return false
	}
	if typ == "ExplanationOfBenefit" && priorAuth(res) {
		if drug(res) || denied(res) {
			return false
		}
		current := res["status"] == "active" || pending(res)
		if !current && lastUpdated.Before(now.AddDate(-1, 0, 0)) {
			return false
		}
	}
	return true
}

// p2pStrip returns raw, a resource of typ as stored, without the financial
// data a payer-to-payer export does not send (PDex STU 2.1 Payer-to-Payer
// Exchange (bulk): "Claims and Encounters, with financial data excluded
// as defined by Non-Financial ExplanationOfBenefit profiles"): an ExplanationOfBenefit's
// eobFinancial members and its items' (item, addItem, and their detail
// and subDetail) itemFinancial members; a Coverage's costToBeneficiary.
// Everything else is raw's bytes as written (member order, numbers as
// written, string escapes: FHIR R4 json.html), and raw itself when there
// is nothing to remove.
func p2pStrip(typ string, raw []byte) ([]byte, error) {
	switch typ {
	case "ExplanationOfBenefit":
		return fhirjson.EditObject(raw, func(name string, v []byte) ([]byte, error) {
			switch {
			case slices.Contains(eobFinancial, name):
				return nil, nil
			case name == "item" || name == "addItem":
				return stripItems(v)
			}
			return v, nil
		})
	case "Coverage":
		return fhirjson.EditObject(raw, func(name string, v []byte) ([]byte, error) {
			if name == "costToBeneficiary" {
				return nil, nil
			}
			return v, nil
		})
	}
	return raw, nil
}

// stripItems removes the amounts and adjudications of claim items: v is a
// list of items (or one item), raw.
func stripItems(v []byte) ([]byte, error) {
	switch firstByte(v) {
	case '[':
		return fhirjson.EditArray(v, func(_ int, e []byte) ([]byte, error) { return stripItems(e) })
	case '{':
		return fhirjson.EditObject(v, func(name string, x []byte) ([]byte, error) {
			switch {
			case slices.Contains(itemFinancial, name):
				return nil, nil
			case name == "detail" || name == "subDetail":
				return stripItems(x)
			}
			return x, nil
		})
	}
	return v, nil
}

// firstByte is the first byte of v that is not JSON white space, 0 if none.
func firstByte(v []byte) byte {
	for _, c := range v {
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		}
		return c
	}
	return 0
}
