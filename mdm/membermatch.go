package mdm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// MemberMatchDefinition is the canonical URL of the Da Vinci HRex
// $member-match OperationDefinition.
const MemberMatchDefinition = "http://hl7.org/fhir/us/davinci-hrex/OperationDefinition/member-match"

// Identifiers this server puts on what $member-match stores.
const (
	// ConsentIdentifierSystem identifies a Consent stored by $member-match
	// by a digest of what was consented, so that the same request twice
	// stores one Consent.
	ConsentIdentifierSystem = "urn:p2pserver:member-match-consent"
	// TagSystem and TagMemberMatch tag the stored Consent with its origin.
	TagSystem      = "urn:p2pserver:tag"
	TagMemberMatch = "member-match"
)

// The HRex versions whose $member-match output profile
// (StructureDefinition hrex-parameters-member-match-out) the answer can
// follow.
const (
	// HRex100 is HRex STU1 (1.0.0), the version the Da Vinci PDex 2.0.0
	// payer-server tests validate against: one parameter, MemberIdentifier
	// (slicing closed), its type v2-0203 MB.
	HRex100 = "1.0.0"
	// HRex110 is HRex STU 1.1 (1.1.0, FHIR-42810 and FHIR-44933):
	// MemberIdentifier typed hrex-temp UMB, and MemberId, a RESTful
	// reference to the member's Patient.
	HRex110 = "1.1.0"
)

// HRexTempSystem is the HRex temporary code system (1.1.0 and later),
// which holds the UMB identifier type.
const HRexTempSystem = "http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp"

// MemberMatchConfig sets up a MemberMatch.
type MemberMatchConfig struct {
	// MaxBody is the largest request accepted, in bytes; default 1 MiB.
	MaxBody int64
	Logger  *slog.Logger
	// Now is the clock for consent and identifier periods; default
	// time.Now.
	Now func() time.Time
	// HRexVersion is the HRex version whose output profile the answer
	// follows: HRex100 (the default, "") or HRex110.
	HRexVersion string
	// MemberIdentifierSystem is the identifier system of this payer's
	// member ids (the -member-identifier-system setting): its identifiers
	// are the MemberIdentifier's next choice after typed member numbers,
	// and a member with no identifier that finds it gets one under it.
	// Empty: "<FHIR base>/Patient", the value then being the Patient's id.
	MemberIdentifierSystem string
	// SourcePayerSystem is the system under which the member's ids at
	// other payers are added to the member here (-mdm-identifier-system):
	// those are never answered as this payer's MemberIdentifier.
	SourcePayerSystem string
}

// MemberMatch serves Patient/$member-match (Da Vinci HRex, as PDex uses it
// between payers): another payer sends what it knows of a member
// (MemberPatient), the coverage the member had here (CoverageToMatch), its
// own coverage (CoverageToLink) and the member's consent (Consent); if
// exactly one member here matches, the answer is that member's identifier
// (one that Patient?identifier=<value> finds the member by: see
// memberIdentifier; shaped by the HRex output profile: see Answer) and the
// Consent is stored for $everything to honour.
//
// Matching is deterministic, as HRex asks: a member matches when
//
//   - demographics agree: the same birthDate (a full date is required), a
//     name with the same family name and, when the request gives one, the
//     same first given name (case and accents ignored), and the same gender
//     when both records have one; and
//   - a coverage ties them: one of the member's Coverages (as beneficiary
//     or subscriber) has an identifier equal to one of CoverageToMatch's
//     (same value, and same system when both give one) or the same
//     subscriberId; or the member's Patient has an identifier equal (system
//     and value) to one of MemberPatient's.
//
// No match or several answer 422 with an OperationOutcome (issue code
// not-found or multiple-matches); a malformed request answers 400; a
// consent that is not in force, denies disclosure or names neither HRex
// policy answers 422.
type MemberMatch struct {
	s   *fhir.Server
	st  *store.Store
	reg *search.Registry
	cfg MemberMatchConfig
	log *slog.Logger
}

// NewMemberMatch builds the operation over the FHIR server s. Call
// Register to offer it. It fails on an HRex version it does not know.
func NewMemberMatch(s *fhir.Server, cfg MemberMatchConfig) (*MemberMatch, error) {
	switch cfg.HRexVersion {
	case "":
		cfg.HRexVersion = HRex100
	case HRex100, HRex110:
	default:
		return nil, fmt.Errorf("mdm: HRex version %q: the $member-match answer follows %s or %s", cfg.HRexVersion, HRex100, HRex110)
	}
	if cfg.MaxBody == 0 {
		cfg.MaxBody = 1 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &MemberMatch{s: s, st: s.Store(), reg: s.Store().Registry(), cfg: cfg, log: cfg.Logger}, nil
}

// Register adds POST Patient/$member-match to the server (and so to its
// CapabilityStatement).
func (m *MemberMatch) Register() {
	m.s.AddOperation(&fhir.Operation{
		Name: "member-match", Types: []string{"Patient"}, Type: true,
		Methods: []string{http.MethodPost}, Definition: MemberMatchDefinition,
		Handler: m.serve,
	})
}

// MatchRequest is a parsed $member-match request.
type MatchRequest struct {
	MemberPatient   map[string]any
	CoverageToMatch map[string]any
	CoverageToLink  map[string]any // nil when not given
	Consent         map[string]any
}

// Matched is the outcome of a unique match.
type Matched struct {
	PatientID  string
	Identifier map[string]any // the MemberIdentifier (an Identifier)
	ConsentID  string         // the stored Consent
	// Added is true when the match gave the member the identifier it
	// answers with (see MemberMatch.memberIdentifier).
	Added bool
}

func (m *MemberMatch) serve(w http.ResponseWriter, r *http.Request) {
	const op = "mdm.member-match"
	if a := fhir.AccessFrom(r.Context()); a != nil {
		if a.Patient != "" {
			fhir.WriteError(w, r, errs.E(op, errs.Permission, "$member-match looks up any member: it needs a token that is not bound to one patient (a payer's system token)"))
			return
		}
		if !a.CanRead("Patient") || !a.CanRead("Coverage") {
			fhir.WriteError(w, r, errs.E(op, errs.Permission, "$member-match needs read access to Patient and Coverage"))
			return
		}
	}
	body, err := m.readBody(w, r)
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	req, err := m.Parse(body)
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	source := ""
	if a := fhir.AccessFrom(r.Context()); a != nil {
		source = a.Subject
	}
	res, err := m.Match(context.WithoutCancel(r.Context()), req, source)
	if err != nil {
		if errs.KindOf(err) == errs.Unprocessable {
			m.log.InfoContext(r.Context(), "member-match refused", "err", err, "by", source)
		}
		fhir.WriteError(w, r, err)
		return
	}
	m.log.InfoContext(r.Context(), "member-match: matched", "patient", res.PatientID, "consent", res.ConsentID, "by", source, "identifier_added", res.Added)
	b, err := json.Marshal(m.Answer(res))
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/fhir+json; charset=utf-8")
	_, _ = w.Write(b)
}

// Answer is the Parameters $member-match answers for a match, per the
// output profile (hrex-parameters-member-match-out) of the configured HRex
// version: under 1.0.0 the MemberIdentifier alone, typed v2-0203 MB (the
// profile's slicing is closed, with one parameter at most); under 1.1.0
// the MemberIdentifier typed hrex-temp UMB and MemberId, the reference
// Patient/<id>.
func (m *MemberMatch) Answer(res *Matched) map[string]any {
	ident := maps.Clone(res.Identifier)
	params := []any{map[string]any{"name": "MemberIdentifier", "valueIdentifier": ident}}
	switch m.cfg.HRexVersion {
	case HRex110:
		ident["type"] = map[string]any{"coding": []any{map[string]any{
			"system": HRexTempSystem, "code": "UMB", "display": "Unique Product-independent Payer Person Identifier",
		}}}
		params = append(params, map[string]any{"name": "MemberId", "valueReference": map[string]any{"reference": "Patient/" + res.PatientID}})
	default:
		ident["type"] = map[string]any{"coding": []any{map[string]any{
			"system": V2IdentifierTypeSystem, "code": "MB", "display": "Member Number",
		}}}
	}
	return map[string]any{"resourceType": "Parameters", "parameter": params}
}

func (m *MemberMatch) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	const op = "mdm.member-match"
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/fhir+json" && mt != "application/json" && mt != "application/json+fhir") {
			return nil, errs.E(op, errs.UnsupportedMedia, "send the Parameters as application/fhir+json")
		}
	}
	// The size limit, the decoding budget it implies, the read deadline.
	return fhir.ReadBody(w, r, m.cfg.MaxBody)
}

// The parameters of $member-match, with the resource type each carries and
// whether it is required. HRex makes Consent optional; PDex requires it
// between payers, and so does this server, since the data it opens the way
// to is released under it.
type matchParam struct {
	name, typ string
	required  bool
}

var matchParams = []matchParam{
	{"MemberPatient", "Patient", true},
	{"CoverageToMatch", "Coverage", true},
	{"CoverageToLink", "Coverage", false},
	{"Consent", "Consent", true},
}

// Parse reads a $member-match Parameters body: each parameter once, as a
// resource of its type, structurally valid FHIR R4; the demographics and
// coverage a deterministic match needs. Errors are Invalid (400) with one
// issue per problem.
func (m *MemberMatch) Parse(body []byte) (*MatchRequest, error) {
	const op = "mdm.member-match"
	doc, err := m.s.ParseResource(body, "Parameters")
	if err != nil {
		return nil, err
	}
	found := map[string]map[string]any{}
	var issues []errs.Issue
	list, _ := doc.Map["parameter"].([]any)
	for i, raw := range list {
		p, _ := raw.(map[string]any)
		name, _ := p["name"].(string)
		path := fmt.Sprintf("Parameters.parameter[%d]", i)
		idx := slices.IndexFunc(matchParams, func(mp matchParam) bool { return mp.name == name })
		switch {
		case idx < 0:
			issues = append(issues, errs.Issue{Code: "value", Path: path, Message: fmt.Sprintf("%q is not a parameter of $member-match (MemberPatient, CoverageToMatch, CoverageToLink, Consent)", name)})
			continue
		case found[name] != nil:
			issues = append(issues, errs.Issue{Code: "value", Path: path, Message: fmt.Sprintf("%s is given more than once", name)})
			continue
		}
		res, _ := p["resource"].(map[string]any)
		if res == nil {
			issues = append(issues, errs.Issue{Code: "required", Path: path + ".resource", Message: fmt.Sprintf("%s must carry a %s resource", name, matchParams[idx].typ)})
			continue
		}
		if rt := res["resourceType"]; rt != matchParams[idx].typ {
			issues = append(issues, errs.Issue{Code: "value", Path: path + ".resource", Message: fmt.Sprintf("%s must be a %s, not a %v", name, matchParams[idx].typ, rt)})
			continue
		}
		found[name] = res
	}
	for _, mp := range matchParams {
		if mp.required && found[mp.name] == nil && !slices.ContainsFunc(issues, func(is errs.Issue) bool { return strings.Contains(is.Message, mp.name) }) {
			issues = append(issues, errs.Issue{Code: "required", Path: "Parameters.parameter", Message: fmt.Sprintf("the %s parameter (a %s) is required", mp.name, mp.typ)})
		}
	}
	req := &MatchRequest{MemberPatient: found["MemberPatient"], CoverageToMatch: found["CoverageToMatch"], CoverageToLink: found["CoverageToLink"], Consent: found["Consent"]}
	if req.MemberPatient != nil {
		if bd, _ := req.MemberPatient["birthDate"].(string); len(bd) != len("2006-01-02") {
			issues = append(issues, errs.Issue{Code: "required", Path: "MemberPatient.birthDate", Message: "the member's birthDate, as a full date, is required to match"})
		}
		if len(familyNames(req.MemberPatient)) == 0 {
			issues = append(issues, errs.Issue{Code: "required", Path: "MemberPatient.name", Message: "the member's name with a family name is required to match"})
		}
	}
	if req.CoverageToMatch != nil {
		sub, _ := req.CoverageToMatch["subscriberId"].(string)
		if len(identifiers(req.CoverageToMatch)) == 0 && sub == "" {
			issues = append(issues, errs.Issue{Code: "required", Path: "CoverageToMatch", Message: "CoverageToMatch needs an identifier or a subscriberId: this server does not match on demographics alone"})
		}
	}
	if len(issues) > 0 {
		return nil, errs.E(op, errs.Invalid, fmt.Sprintf("the $member-match request is not usable (%d problems)", len(issues)), issues)
	}
	return req, nil
}

// Match finds the one member req describes, stores its Consent (once,
// however often the same request comes) for Patient/<match>, and returns
// the member. source names the requester (the token's subject) for the
// stored Consent's meta.source. Errors: Unprocessable (422) for a consent
// that cannot be honoured, no match, or several.
func (m *MemberMatch) Match(ctx context.Context, req *MatchRequest, source string) (*Matched, error) {
	const op = "mdm.member-match"
	if err := checkConsent(req.Consent, m.cfg.Now()); err != nil {
		return nil, err
	}
	var res *Matched
	err := m.st.Write(ctx, func(tx *store.Tx) error {
		res = nil
		ids, err := m.candidates(tx, req)
		if err != nil {
			return err
		}
		switch len(ids) {
		case 0:
			return errs.E(op, errs.Unprocessable, "no member matches", errs.Issue{Code: "not-found",
				Message: "no member here matches the demographics and coverage given"})
		case 1:
		default:
			return errs.E(op, errs.Unprocessable, "several members match", errs.Issue{Code: "multiple-matches",
				Message: fmt.Sprintf("%d members here match the demographics and coverage given; send more (identifiers, the full name) to tell them apart", len(ids))})
		}
		patient, err := tx.Read("Patient", ids[0])
		if err != nil {
			return err
		}
		pm, err := decode(patient.JSON)
		if err != nil {
			return err
		}
		consentID, err := m.storeConsent(tx, req, ids[0], source)
		if err != nil {
			return err
		}
		ident, added, err := m.memberIdentifier(tx, patient, pm)
		if err != nil {
			return err
		}
		res = &Matched{PatientID: ids[0], Identifier: ident, ConsentID: consentID, Added: added}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// checkConsent refuses a consent this server cannot honour: not active,
// not about privacy, ended, denying, or without an HRex policy.
func checkConsent(c map[string]any, now time.Time) error {
	const op = "mdm.member-match"
	bad := func(path, msg string) error {
		return errs.E(op, errs.Unprocessable, "the consent cannot be honoured", errs.Issue{Code: "business-rule", Path: "Consent." + path, Message: msg})
	}
	if c["status"] != "active" {
		return bad("status", fmt.Sprintf("the consent's status is %v; it must be active", c["status"]))
	}
	if !hasCoding(c["scope"], "http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy") {
		return bad("scope", "the consent's scope must be patient-privacy (consentscope)")
	}
	prov, _ := c["provision"].(map[string]any)
	if prov["type"] == "deny" {
		return bad("provision.type", "the consent denies disclosure; there is nothing to exchange")
	}
	period, _ := prov["period"].(map[string]any)
	if end, _ := period["end"].(string); end != "" {
		if _, hi, err := search.DateRange(end); err == nil && now.UnixMilli() > hi {
			return bad("provision.period.end", fmt.Sprintf("the consent ended on %s", end))
		}
	}
	policies, _ := c["policy"].([]any)
	known := false
	for _, raw := range policies {
		p, _ := raw.(map[string]any)
		known = known || p["uri"] == PolicyRegular || p["uri"] == PolicySensitive
	}
	if !known {
		return bad("policy", "the consent must name its policy: "+PolicyRegular+" (non-sensitive data only) or "+PolicySensitive+" (all data)")
	}
	return nil
}

// candidates returns the ids of the members that match req, sorted.
func (m *MemberMatch) candidates(tx *store.Tx, req *MatchRequest) ([]string, error) {
	bd, _ := req.MemberPatient["birthDate"].(string)
	q, err := m.reg.Parse("Patient", url.Values{"birthdate": {bd}}, search.Options{})
	if err != nil {
		return nil, err
	}
	ids, err := tx.Search(q)
	if err != nil {
		return nil, err
	}
	vs, err := tx.ReadCurrent("Patient", ids)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, v := range vs {
		p, err := decode(v.JSON)
		if err != nil {
			return nil, err
		}
		if !sameDemographics(req.MemberPatient, p) {
			continue
		}
		tied, err := m.coverageTies(tx, req, v.ID, p)
		if err != nil {
			return nil, err
		}
		if tied {
			out = append(out, v.ID)
		}
	}
	return out, nil
}

func sameDemographics(want, have map[string]any) bool {
	if want["birthDate"] != have["birthDate"] {
		return false
	}
	wg, _ := want["gender"].(string)
	hg, _ := have["gender"].(string)
	if wg != "" && hg != "" && wg != hg {
		return false
	}
	wantNames, _ := want["name"].([]any)
	haveNames, _ := have["name"].([]any)
	for _, wn := range wantNames {
		w, _ := wn.(map[string]any)
		wf, _ := w["family"].(string)
		if wf == "" {
			continue
		}
		var wfirst string
		if given, _ := w["given"].([]any); len(given) > 0 {
			wfirst, _ = given[0].(string)
		}
		for _, hn := range haveNames {
			h, _ := hn.(map[string]any)
			hf, _ := h["family"].(string)
			if search.Normalize(hf) != search.Normalize(wf) {
				continue
			}
			if wfirst == "" {
				return true
			}
			if given, _ := h["given"].([]any); len(given) > 0 {
				if hfirst, _ := given[0].(string); search.Normalize(hfirst) == search.Normalize(wfirst) {
					return true
				}
			}
		}
	}
	return false
}

// coverageTies reports whether a Coverage of the member (or the member's
// own identifiers) ties it to the request.
func (m *MemberMatch) coverageTies(tx *store.Tx, req *MatchRequest, id string, patient map[string]any) (bool, error) {
	for _, want := range identifiers(req.MemberPatient) {
		for _, have := range identifiers(patient) {
			if want.system != "" && want.system == have.system && want.value == have.value {
				return true, nil
			}
		}
	}
	covIDs := append(tx.Referencing("Coverage", "beneficiary", "Patient", id), tx.Referencing("Coverage", "subscriber", "Patient", id)...)
	slices.Sort(covIDs)
	covs, err := tx.ReadCurrent("Coverage", slices.Compact(covIDs))
	if err != nil {
		return false, err
	}
	wantIDs := identifiers(req.CoverageToMatch)
	wantSub, _ := req.CoverageToMatch["subscriberId"].(string)
	for _, v := range covs {
		c, err := decode(v.JSON)
		if err != nil {
			return false, err
		}
		if sub, _ := c["subscriberId"].(string); wantSub != "" && sub == wantSub {
			return true, nil
		}
		for _, have := range identifiers(c) {
			for _, want := range wantIDs {
				if want.value == have.value && (want.system == "" || have.system == "" || want.system == have.system) {
					return true, nil
				}
			}
		}
	}
	return false, nil
}

type ident struct{ system, value string }

func identifiers(res map[string]any) []ident {
	var out []ident
	list, _ := res["identifier"].([]any)
	for _, raw := range list {
		i, _ := raw.(map[string]any)
		v, _ := i["value"].(string)
		if v == "" {
			continue
		}
		s, _ := i["system"].(string)
		out = append(out, ident{s, v})
	}
	return out
}

func familyNames(p map[string]any) []string {
	var out []string
	names, _ := p["name"].([]any)
	for _, raw := range names {
		n, _ := raw.(map[string]any)
		if f, _ := n["family"].(string); strings.TrimSpace(f) != "" {
			out = append(out, f)
		}
	}
	return out
}

// memberIdentifier chooses the identifier $member-match answers with. The
// requester's next step is Patient?identifier=<value>, the value alone
// (the PDex payer-server suite does exactly that), so the answer must be
// an identifier that search finds the member by, and only the member:
//
//  1. the candidates are the Patient's identifiers with a value, leaving
//     out those no longer in use (use "old", or a period that has ended)
//     and those naming the member at another payer (SourcePayerSystem);
//  2. they are tried in this order, each rank in the Patient's order: a
//     Member Number (v2-0203 MB); a unique member id (hrex-temp UMB,
//     CARIN BB um); one under MemberIdentifierSystem; any other;
//  3. the first whose value, searched as Patient?identifier=<value>,
//     finds this Patient and no other is the answer; a value that search
//     reads otherwise (a "|" or "," in it, one shared with another
//     Patient, one the index cannot find) is passed over;
//  4. when none is found so, the member gets one: type MB, system
//     MemberIdentifierSystem (default <FHIR base>/Patient), value the
//     Patient's id (a new uuid when another Patient has that value), added
//     to the Patient in the match's transaction, so the same member
//     matched again answers with it. added is then true.
//
// The answer copies the identifier's system, value and assigner; Answer
// sets the type the HRex profile fixes.
func (m *MemberMatch) memberIdentifier(tx *store.Tx, patient *store.Version, pm map[string]any) (ident map[string]any, added bool, err error) {
	const op = "mdm.member-match"
	list, _ := pm["identifier"].([]any)
	type candidate struct {
		rank int
		id   map[string]any
	}
	var cands []candidate
	for _, raw := range list {
		i, _ := raw.(map[string]any)
		v, _ := i["value"].(string)
		sys, _ := i["system"].(string)
		if v == "" || i["use"] == "old" || m.ended(i["period"]) || (m.cfg.SourcePayerSystem != "" && sys == m.cfg.SourcePayerSystem) {
			continue
		}
		rank := 3
		switch {
		case hasCoding(i["type"], V2IdentifierTypeSystem, "MB"):
			rank = 0
		case hasCoding(i["type"], HRexTempSystem, "UMB"), hasCoding(i["type"], C4BBIdentifierTypeSystem, "um"):
			rank = 1
		case m.cfg.MemberIdentifierSystem != "" && sys == m.cfg.MemberIdentifierSystem:
			rank = 2
		}
		cands = append(cands, candidate{rank, i})
	}
	slices.SortStableFunc(cands, func(a, b candidate) int { return a.rank - b.rank })
	for _, c := range cands {
		v, _ := c.id["value"].(string)
		only, err := m.findsOnly(tx, v, patient.ID)
		if err != nil {
			return nil, false, err
		}
		if only {
			return answerIdentifier(c.id), false, nil
		}
	}

	// None: give the member one.
	sys := m.cfg.MemberIdentifierSystem
	if sys == "" {
		sys = m.s.BaseURL() + "/Patient"
	}
	value := patient.ID
	if found, err := m.find(tx, value); err != nil {
		return nil, false, err
	} else if len(found) > 0 {
		value = uuid.NewString()
	}
	newID := map[string]any{
		"use":    "usual",
		"type":   map[string]any{"coding": []any{map[string]any{"system": V2IdentifierTypeSystem, "code": "MB", "display": "Member Number"}}},
		"system": sys,
		"value":  value,
	}
	// The identifiers there are kept as they were written.
	var kept struct {
		Identifier []json.RawMessage `json:"identifier"`
	}
	if err := json.Unmarshal(patient.JSON, &kept); err != nil {
		return nil, false, err
	}
	raw, err := json.Marshal(newID)
	if err != nil {
		return nil, false, err
	}
	doc := &store.Doc{Type: "Patient", ID: patient.ID, Map: pm, JSON: patient.JSON}
	if err := doc.Set("identifier", append(kept.Identifier, raw)); err != nil {
		return nil, false, err
	}
	if _, err := tx.Put(doc, store.PutOptions{IfMatch: patient.VersionID}); err != nil {
		return nil, false, err
	}
	if only, err := m.findsOnly(tx, value, patient.ID); err != nil {
		return nil, false, err
	} else if !only {
		return nil, false, errs.E(op, errs.Internal, fmt.Sprintf("the member identifier %s|%s added to Patient/%s is not found by Patient?identifier=", sys, value, patient.ID))
	}
	return answerIdentifier(newID), true, nil
}

// answerIdentifier is the MemberIdentifier for one of the Patient's
// identifiers: its system, value and assigner.
func answerIdentifier(i map[string]any) map[string]any {
	out := map[string]any{"value": i["value"]}
	if s, _ := i["system"].(string); s != "" {
		out["system"] = s
	}
	if a, ok := i["assigner"]; ok {
		out["assigner"] = a
	}
	return out
}

// find returns the Patients that Patient?identifier=<value> finds, as a
// client's search would; nil when the value does not parse as a search
// (then no search finds anything by it).
func (m *MemberMatch) find(tx *store.Tx, value string) ([]string, error) {
	q, err := m.reg.Parse("Patient", url.Values{"identifier": {value}}, search.Options{Base: m.s.BaseURL()})
	if err != nil {
		if errs.KindOf(err) == errs.Invalid {
			return nil, nil
		}
		return nil, err
	}
	return tx.Search(q)
}

// findsOnly reports whether Patient?identifier=<value> finds Patient/id and
// nothing else.
func (m *MemberMatch) findsOnly(tx *store.Tx, value, id string) (bool, error) {
	found, err := m.find(tx, value)
	if err != nil {
		return false, err
	}
	return len(found) == 1 && found[0] == id, nil
}

// ended reports whether an Identifier.period has ended.
func (m *MemberMatch) ended(period any) bool {
	p, _ := period.(map[string]any)
	end, _ := p["end"].(string)
	if end == "" {
		return false
	}
	_, hi, err := search.DateRange(end)
	return err == nil && m.cfg.Now().UnixMilli() > hi
}

// storeConsent writes the request's Consent for Patient/patient, or finds
// the one an identical earlier request stored. The Consent is kept as the
// requester wrote it but for: its patient (and any performer that named
// the requester's copy of the member) pointing at the member here, an
// identifier holding a digest of what was consented, a tag saying
// $member-match stored it, and meta.source naming the requester.
func (m *MemberMatch) storeConsent(tx *store.Tx, req *MatchRequest, patient, source string) (string, error) {
	c := map[string]any{}
	for k, v := range req.Consent {
		switch k {
		case "id", "meta", "text":
		default:
			c[k] = v
		}
	}
	member := map[string]any{"reference": "Patient/" + patient}
	c["patient"] = member
	// A relative Patient reference in the requester's Consent can only
	// mean their record of the member; here it is this member.
	if perf, ok := c["performer"].([]any); ok {
		out := make([]any, 0, len(perf))
		for _, raw := range perf {
			p, _ := raw.(map[string]any)
			r, _ := p["reference"].(string)
			if id, ok := strings.CutPrefix(search.NormalizeReference(r, ""), "Patient/"); ok && !strings.Contains(id, "/") {
				out = append(out, member)
				continue
			}
			out = append(out, raw)
		}
		c["performer"] = out
	}
	canon, err := json.Marshal(c) // map keys sorted: a stable digest
	if err != nil {
		return "", err
	}
	// The requester is part of the digest: a Consent is held for the payer
	// that sent it (ConsentHolds looks for its meta.source), so two payers
	// sending the same Consent each get their own.
	sum := sha256.Sum256(append(canon, "\x00"+RequesterSource(source)...))
	digest := hex.EncodeToString(sum[:])
	q, err := m.reg.Parse("Consent", url.Values{"identifier": {ConsentIdentifierSystem + "|" + digest}}, search.Options{})
	if err != nil {
		return "", err
	}
	if found, err := tx.Search(q); err != nil {
		return "", err
	} else if len(found) > 0 {
		return found[0], nil
	}
	ids, _ := c["identifier"].([]any)
	c["identifier"] = append(slices.Clone(ids), map[string]any{"system": ConsentIdentifierSystem, "value": digest})
	meta := map[string]any{"tag": []any{map[string]any{"system": TagSystem, "code": TagMemberMatch, "display": "stored by $member-match"}}}
	if old, _ := req.Consent["meta"].(map[string]any); old != nil && old["profile"] != nil {
		meta["profile"] = old["profile"]
	}
	if source != "" {
		meta["source"] = RequesterSource(source)
	}
	c["meta"] = meta
	c["resourceType"] = "Consent"
	raw, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	doc, err := m.s.ParseResource(raw, "Consent")
	if err != nil {
		return "", err
	}
	doc.ID = fhir.NewID()
	if _, err := tx.Put(doc, store.PutOptions{CreateOnly: true}); err != nil {
		return "", err
	}
	return doc.ID, nil
}

// Find returns the ids of the members req describes by the matching rules
// above (demographics and a coverage tie), sorted, without looking at the
// consent or writing anything: $bulk-member-match sorts a member that
// matches but whose consent cannot be honoured apart from one that does
// not match.
func (m *MemberMatch) Find(ctx context.Context, req *MatchRequest) ([]string, error) {
	var ids []string
	err := m.st.View(ctx, func(tx *store.Tx) (err error) {
		ids, err = m.candidates(tx, req)
		return err
	})
	return ids, err
}

// CheckConsent refuses (Unprocessable, issue code business-rule) a
// consent this server cannot honour now: not active, not about privacy,
// ended, denying, or without an HRex policy; nil when it can be honoured.
func (m *MemberMatch) CheckConsent(c map[string]any) error { return checkConsent(c, m.cfg.Now()) }
