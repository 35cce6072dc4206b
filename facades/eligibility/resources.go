package eligibility

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"time"
)

// FHIR JSON shapes this package writes. Structs rather than maps keep the
// member order stable and readable.

type coding struct {
	System  string `json:"system,omitempty"`
	Code    string `json:"code,omitempty"`
	Display string `json:"display,omitempty"`
}

type concept struct {
	Coding []coding `json:"coding,omitempty"`
	Text   string   `json:"text,omitempty"`
}

type reference struct {
	Reference string `json:"reference,omitempty"`
	Display   string `json:"display,omitempty"`
}

type money struct {
	Value    json.Number `json:"value"`
	Currency string      `json:"currency"`
}

type period struct {
	Start string `json:"start,omitempty"`
	End   string `json:"end,omitempty"`
}

type benefitJSON struct {
	Type               concept `json:"type"`
	AllowedUnsignedInt *int    `json:"allowedUnsignedInt,omitempty"`
	AllowedString      string  `json:"allowedString,omitempty"`
	AllowedMoney       *money  `json:"allowedMoney,omitempty"`
	UsedMoney          *money  `json:"usedMoney,omitempty"`
}

type itemJSON struct {
	Category              *concept      `json:"category,omitempty"`
	Excluded              *bool         `json:"excluded,omitempty"`
	Name                  string        `json:"name,omitempty"`
	Network               *concept      `json:"network,omitempty"`
	Unit                  *concept      `json:"unit,omitempty"`
	Term                  *concept      `json:"term,omitempty"`
	Benefit               []benefitJSON `json:"benefit,omitempty"`
	AuthorizationRequired *bool         `json:"authorizationRequired,omitempty"`
}

type insuranceJSON struct {
	Coverage      json.RawMessage `json:"coverage"`
	Inforce       *bool           `json:"inforce,omitempty"`
	BenefitPeriod *period         `json:"benefitPeriod,omitempty"`
	Item          []itemJSON      `json:"item,omitempty"`
}

type errorJSON struct {
	Code concept `json:"code"`
}

type responseJSON struct {
	ResourceType string            `json:"resourceType"`
	ID           string            `json:"id"`
	Contained    []json.RawMessage `json:"contained,omitempty"`
	Identifier   []identifier      `json:"identifier,omitempty"`
	Status       string            `json:"status"`
	Purpose      json.RawMessage   `json:"purpose"`
	Patient      json.RawMessage   `json:"patient"`
	ServicedDate string            `json:"servicedDate,omitempty"`
	Created      string            `json:"created"`
	Requestor    json.RawMessage   `json:"requestor,omitempty"`
	Request      reference         `json:"request"`
	Outcome      string            `json:"outcome"`
	Disposition  string            `json:"disposition,omitempty"`
	Insurer      json.RawMessage   `json:"insurer"`
	Insurance    []insuranceJSON   `json:"insurance,omitempty"`
	Error        []errorJSON       `json:"error,omitempty"`
}

type identifier struct {
	System string `json:"system"`
	Value  string `json:"value"`
}

// IdentifierSystem is the system of the vendor reference written to
// CoverageEligibilityResponse.identifier, followed by "/<vendor>".
const IdentifierSystem = "http://payer-to-payer-exchange/CodeSystem/eligibility-vendor-ref"

// responseDoc builds the CoverageEligibilityResponse for a finished check
// from the stored request (raw JSON), the mapping row and the vendor's
// result. Elements the response must copy (patient, insurer, coverage) are
// copied as the request wrote them, with the request's contained resources
// when they are local references.
func responseDoc(respID string, reqJSON []byte, vendor string, row StatusMapping, res Result, errCode *ErrorCode, detail string, now time.Time) ([]byte, error) {
	var rq map[string]json.RawMessage
	if err := json.Unmarshal(reqJSON, &rq); err != nil {
		return nil, err
	}
	var reqID string
	_ = json.Unmarshal(rq["id"], &reqID)
	out := responseJSON{
		ResourceType: "CoverageEligibilityResponse",
		ID:           respID,
		Status:       "active",
		Purpose:      rq["purpose"],
		Patient:      rq["patient"],
		Created:      now.UTC().Format(time.RFC3339),
		Requestor:    rq["provider"],
		Request:      reference{Reference: "CoverageEligibilityRequest/" + reqID},
		Outcome:      row.Outcome,
		Insurer:      rq["insurer"],
	}
	if s, ok := rq["servicedDate"]; ok {
		_ = json.Unmarshal(s, &out.ServicedDate)
	}
	if len(out.Purpose) == 0 {
		out.Purpose = json.RawMessage(`["validation"]`)
	}
	if res.Ref != "" {
		out.Identifier = []identifier{{System: IdentifierSystem + "/" + vendor, Value: res.Ref}}
	}
	if usesContained(out.Patient, out.Insurer, out.Requestor) || usesContained(coverageRef(rq)) {
		var contained []json.RawMessage
		_ = json.Unmarshal(rq["contained"], &contained)
		out.Contained = contained
	}
	out.Disposition = row.Disposition
	if detail != "" {
		if out.Disposition != "" {
			out.Disposition += ": "
		}
		out.Disposition += detail
	}
	if out.Outcome == "complete" {
		inforce := row.InForce == "true"
		ins := insuranceJSON{Coverage: coverageRef(rq), Inforce: &inforce}
		if len(ins.Coverage) == 0 {
			ins.Coverage = json.RawMessage(`{"display":"coverage named by the request"}`)
		}
		if c := res.Coverage; c != nil {
			if c.Start != "" || c.End != "" {
				ins.BenefitPeriod = &period{Start: c.Start, End: c.End}
			}
			for _, b := range c.Benefits {
				ins.Item = append(ins.Item, benefitItem(b))
			}
		}
		out.Insurance = []insuranceJSON{ins}
	}
	if errCode != nil {
		text := errCode.Display
		if errCode.Fix != "" {
			text += "; check " + errCode.Fix
		}
		if detail != "" {
			text += " (" + detail + ")"
		}
		out.Error = []errorJSON{{Code: concept{Coding: []coding{{System: ErrorSystem, Code: errCode.Code, Display: errCode.Display}}, Text: text}}}
	}
	if len(out.Patient) == 0 || len(out.Insurer) == 0 {
		// Required by R4; a request written without them never gets here
		// (the validator refuses it), but keep the resource valid anyway.
		if len(out.Patient) == 0 {
			out.Patient = json.RawMessage(`{"display":"unknown patient"}`)
		}
		if len(out.Insurer) == 0 {
			out.Insurer = json.RawMessage(`{"display":"unknown insurer"}`)
		}
	}
	return json.Marshal(out)
}

func coverageRef(rq map[string]json.RawMessage) json.RawMessage {
	var ins []struct {
		Focal    bool            `json:"focal"`
		Coverage json.RawMessage `json:"coverage"`
	}
	_ = json.Unmarshal(rq["insurance"], &ins)
	for _, i := range ins {
		if i.Focal {
			return i.Coverage
		}
	}
	if len(ins) > 0 {
		return ins[0].Coverage
	}
	return nil
}

func usesContained(refs ...json.RawMessage) bool {
	for _, r := range refs {
		if bytes.Contains(r, []byte(`"reference":"#`)) || bytes.Contains(r, []byte(`"reference": "#`)) {
			return true
		}
	}
	return false
}

const (
	benefitTypeSystem    = "http://terminology.hl7.org/CodeSystem/benefit-type"
	benefitNetworkSystem = "http://terminology.hl7.org/CodeSystem/benefit-network"
	benefitUnitSystem    = "http://terminology.hl7.org/CodeSystem/benefit-unit"
	benefitTermSystem    = "http://terminology.hl7.org/CodeSystem/benefit-term"
	// localBenefitSystem carries benefit types R4's example code system
	// lacks (the out-of-pocket maximum).
	localBenefitSystem = "http://payer-to-payer-exchange/CodeSystem/benefit-type"
)

func benefitItem(b Benefit) itemJSON {
	it := itemJSON{Name: b.Name, AuthorizationRequired: b.AuthorizationRequired}
	if b.ServiceType != "" {
		it.Category = &concept{Coding: []coding{{System: ServiceTypeSystem, Code: b.ServiceType}}}
	}
	if b.Covered != nil {
		excluded := !*b.Covered
		it.Excluded = &excluded
	}
	switch b.Network {
	case "in":
		it.Network = &concept{Coding: []coding{{System: benefitNetworkSystem, Code: "in", Display: "In Network"}}}
	case "out":
		it.Network = &concept{Coding: []coding{{System: benefitNetworkSystem, Code: "out", Display: "Out of Network"}}}
	}
	switch b.Unit {
	case "individual", "family":
		it.Unit = &concept{Coding: []coding{{System: benefitUnitSystem, Code: b.Unit}}}
	}
	term := false
	typ := func(system, code, display string) concept {
		return concept{Coding: []coding{{System: system, Code: code, Display: display}}}
	}
	if b.Copay != nil {
		it.Benefit = append(it.Benefit, benefitJSON{Type: typ(benefitTypeSystem, "copay", "Copayment per service"), AllowedMoney: usd(*b.Copay)})
	}
	if b.Coinsurance != nil {
		bj := benefitJSON{Type: typ(benefitTypeSystem, "copay-percent", "Coinsurance (member's share, percent)")}
		pct := *b.Coinsurance * 100
		if r := math.Round(pct); math.Abs(pct-r) < 1e-9 && r >= 0 {
			n := int(r)
			bj.AllowedUnsignedInt = &n
		} else {
			bj.AllowedString = strconv.FormatFloat(pct, 'f', -1, 64) + "%"
		}
		it.Benefit = append(it.Benefit, bj)
	}
	if b.Deductible != nil || b.DeductibleRemaining != nil {
		it.Benefit = append(it.Benefit, allowedUsed(typ(benefitTypeSystem, "deductible", "Deductible"), b.Deductible, b.DeductibleRemaining))
		term = true
	}
	if b.OutOfPocket != nil || b.OutOfPocketRemaining != nil {
		it.Benefit = append(it.Benefit, allowedUsed(typ(localBenefitSystem, "out-of-pocket", "Out-of-pocket maximum"), b.OutOfPocket, b.OutOfPocketRemaining))
		term = true
	}
	if b.Maximum != nil || b.MaximumRemaining != nil {
		it.Benefit = append(it.Benefit, allowedUsed(typ(benefitTypeSystem, "benefit", "Benefit maximum"), b.Maximum, b.MaximumRemaining))
		term = true
	}
	if term {
		it.Term = &concept{Coding: []coding{{System: benefitTermSystem, Code: "annual", Display: "Annual"}}}
	}
	return it
}

// allowedUsed writes a limit and what is left of it the FHIR way: allowed
// is the limit, used = limit - remaining. With only the remaining amount
// known, it is written as text.
func allowedUsed(t concept, total, remaining *float64) benefitJSON {
	bj := benefitJSON{Type: t}
	if total != nil {
		bj.AllowedMoney = usd(*total)
		if remaining != nil {
			bj.UsedMoney = usd(math.Max(0, *total-*remaining))
		}
	} else if remaining != nil {
		bj.AllowedString = "remaining " + strconv.FormatFloat(*remaining, 'f', 2, 64) + " USD"
	}
	return bj
}

func usd(v float64) *money {
	return &money{Value: json.Number(strconv.FormatFloat(math.Round(v*100)/100, 'f', -1, 64)), Currency: "USD"}
}

// taskJSON is the Task that tracks a check.
type taskJSON struct {
	ResourceType   string       `json:"resourceType"`
	ID             string       `json:"id"`
	Identifier     []identifier `json:"identifier,omitempty"`
	Status         string       `json:"status"`
	StatusReason   *concept     `json:"statusReason,omitempty"`
	BusinessStatus *concept     `json:"businessStatus,omitempty"`
	Intent         string       `json:"intent"`
	Code           concept      `json:"code"`
	Description    string       `json:"description,omitempty"`
	Focus          reference    `json:"focus"`
	For            *reference   `json:"for,omitempty"`
	AuthoredOn     string       `json:"authoredOn"`
	LastModified   string       `json:"lastModified"`
	Owner          *reference   `json:"owner,omitempty"`
	Input          []taskParam  `json:"input,omitempty"`
	Output         []taskParam  `json:"output,omitempty"`
}

type taskParam struct {
	Type           concept         `json:"type"`
	ValueString    *string         `json:"valueString,omitempty"`
	ValueStringExt json.RawMessage `json:"_valueString,omitempty"`
	ValueReference *reference      `json:"valueReference,omitempty"`
}

// Task input and output types (codes of TaskSystem).
const (
	// InputTwoFactorCode is the input an on-hold Task asks for: the
	// payer portal's second-factor code. Its value is absent (with a
	// data-absent-reason) until the client supplies it.
	InputTwoFactorCode = "2fa-code"
	// OutputResponse references the CoverageEligibilityResponse.
	OutputResponse = "eligibility-response"
	// TaskCode is Task.code of eligibility Tasks.
	TaskCode = "eligibility-check"
)

// askedUnknown marks a requested input whose value is not known yet.
var askedUnknown = json.RawMessage(`{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason","valueCode":"asked-unknown"}]}`)

func taskCode() concept {
	return concept{Coding: []coding{{System: TaskSystem, Code: TaskCode, Display: "Coverage eligibility check"}}, Text: "Eligibility check"}
}

func newTask(taskID, reqID, patientRef, vendor, payer string, now time.Time) taskJSON {
	t := taskJSON{
		ResourceType: "Task",
		ID:           taskID,
		Status:       "requested",
		Intent:       "order",
		Code:         taskCode(),
		Description:  "Eligibility check of CoverageEligibilityRequest/" + reqID + " with " + vendor + " for payer " + payer,
		Focus:        reference{Reference: "CoverageEligibilityRequest/" + reqID},
		AuthoredOn:   now.UTC().Format(time.RFC3339),
		LastModified: now.UTC().Format(time.RFC3339),
		Owner:        &reference{Display: "eligibility vendor " + vendor},
	}
	if patientRef != "" {
		t.For = &reference{Reference: patientRef}
	}
	return t
}

func decodeMap(b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, err
	}
	return m, nil
}
