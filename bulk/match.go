package bulk

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// PDex STU 2.1 codes and profiles of the $bulk-member-match result.
const (
	MatchResultSystem   = "http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMultiMemberMatchResultCS"
	MatchGroupProfile   = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-member-match-group"
	NoMatchGroupProfile = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-member-no-match-group"
	MatchParametersOut  = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-parameters-multi-member-match-bundle-out"
	// MatchParametersExtension, on a member entry of a result Group,
	// points at the contained Patient that was submitted for the member
	// (its id kept): how the requester finds its own member again.
	MatchParametersExtension = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-match-parameters"
	matchCoverageExt         = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/base-ext-match-coverage"
	// ClientIdentifierSystem identifies, on the Groups $bulk-member-match
	// writes, the client that asked (Group.identifier and
	// characteristic.valueReference): Group?identifier=<system>|<owner>
	// finds a client's Groups.
	ClientIdentifierSystem = "urn:p2pserver:bulk-client"
	// JobIdentifierSystem identifies the Groups of one $bulk-member-match
	// job (value: the job id).
	JobIdentifierSystem = "urn:p2pserver:bulk-member-match"
)

// The outcomes of one member.
const (
	outcomeMatched    = "match"
	outcomeNoMatch    = "nomatch"
	outcomeConstraint = "consentconstraint"
)

// memberOutcome is one member's result, kept in the job's results file
// until the Groups are written.
type memberOutcome struct {
	Outcome  string         `json:"outcome"`
	Patient  string         `json:"patient,omitempty"` // the member here, when matched
	Member   map[string]any `json:"member,omitempty"`  // the submitted MemberPatient
	Coverage map[string]any `json:"coverage,omitempty"`
}

// matchKickoff serves POST Group/$bulk-member-match (PDex STU 2.1
// BulkMemberMatch): it checks the request, keeps each MemberBundle as one
// line of the job's input file, and answers 202.
func (e *Exporter) matchKickoff(w http.ResponseWriter, r *http.Request) {
	const op = "bulk.bulk-member-match"
	if err := requireAsync(r, op); err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	p := fhir.AccessFrom(r.Context())
	if p.Member() {
		fhir.WriteError(w, r, errs.E(op, errs.Permission, "$bulk-member-match looks up many members: it needs a payer's system token, not one bound to a patient"))
		return
	}
	if !p.CanRead("Patient") || !p.CanRead("Coverage") {
		fhir.WriteError(w, r, errs.E(op, errs.Permission, "$bulk-member-match needs read access to Patient and Coverage"))
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || (mt != "application/fhir+json" && mt != "application/json") {
			fhir.WriteError(w, r, errs.E(op, errs.UnsupportedMedia, "send the multi-member-match Parameters as application/fhir+json"))
			return
		}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, e.cfg.MaxBody+1))
	if err != nil {
		fhir.WriteError(w, r, errs.E(op, errs.Invalid, "the request body could not be read", err))
		return
	}
	if int64(len(body)) > e.cfg.MaxBody {
		fhir.WriteError(w, r, errs.E(op, errs.TooLarge, fmt.Sprintf("the request is larger than %d bytes; send the members in several requests", e.cfg.MaxBody)))
		return
	}
	lines, err := splitMembers(body)
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	requester := ""
	if p != nil {
		requester = p.Subject
	}
	j := &Job{ID: fhir.NewID(), Kind: KindMatch, Owner: Owner(r.Context()), Requester: requester, Request: e.requestURL(r),
		TransactionTime: e.now(), State: StateAccepted, Members: len(lines), Match: &MatchCounts{}}
	if id, ok := smart.BackendClient(r.Context()); ok && e.cfg.Organization != nil {
		j.RequesterOrg = e.cfg.Organization(r.Context(), id)
	}
	if err := os.MkdirAll(e.jobDir(j.ID), 0o750); err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	if err := os.WriteFile(filepath.Join(e.jobDir(j.ID), inputFile), bytes.Join(lines, nil), 0o640); err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	if err := e.accept(r.Context(), j); err != nil {
		_ = os.RemoveAll(e.jobDir(j.ID))
		fhir.WriteError(w, r, err)
		return
	}
	e.log.InfoContext(r.Context(), "bulk: bulk-member-match accepted", "job", j.ID, "members", len(lines), "owner", j.Owner)
	e.accepted(w, j)
}

const (
	inputFile   = "input.ndjson"
	resultsFile = "results.ndjson"
)

// splitMembers checks the multi-member-match Parameters (PDex
// pdex-parameters-multi-member-match-bundle-in: parameters named
// MemberBundle, each with parts) and returns each MemberBundle's parts as
// one JSON line. What is wrong inside one member's parts is that member's
// outcome (not matched), not the request's.
func splitMembers(body []byte) ([][]byte, error) {
	const op = "bulk.bulk-member-match"
	var pr struct {
		ResourceType string `json:"resourceType"`
		Parameter    []struct {
			Name string            `json:"name"`
			Part []json.RawMessage `json:"part"`
		} `json:"parameter"`
	}
	if err := json.Unmarshal(body, &pr); err != nil || pr.ResourceType != "Parameters" {
		return nil, errs.E(op, errs.Invalid, "the body must be a Parameters resource (PDex multi-member-match request)")
	}
	var out [][]byte
	var issues []errs.Issue
	for i, p := range pr.Parameter {
		path := fmt.Sprintf("Parameters.parameter[%d]", i)
		switch {
		case p.Name != "MemberBundle":
			issues = append(issues, errs.Issue{Code: "value", Path: path, Message: fmt.Sprintf("%q is not a parameter of $bulk-member-match (MemberBundle)", p.Name)})
		case len(p.Part) == 0:
			issues = append(issues, errs.Issue{Code: "required", Path: path + ".part", Message: "a MemberBundle carries its member's MemberPatient, CoverageToMatch, Consent (and CoverageToLink) as parts"})
		default:
			line, err := json.Marshal(map[string]any{"resourceType": "Parameters", "parameter": p.Part})
			if err != nil {
				return nil, err
			}
			out = append(out, append(line, '\n'))
		}
	}
	if len(issues) > 0 {
		return nil, errs.E(op, errs.Invalid, fmt.Sprintf("the $bulk-member-match request is not usable (%d problems)", len(issues)), issues)
	}
	if len(out) == 0 {
		return nil, errs.E(op, errs.Invalid, "the request has no MemberBundle")
	}
	return out, nil
}

// matchSlice decides the outcome of up to 50 members from the cursor
// (Cursor.After: the byte offset in the input file), appends them to the
// results file and checkpoints; when every member is done it writes the
// Groups.
func (e *Exporter) matchSlice(ctx context.Context, j *Job) (bool, error) {
	dir := e.jobDir(j.ID)
	if j.Cursor.Member >= j.Members {
		return false, e.matchFinish(ctx, j)
	}
	off, _ := strconv.ParseInt(j.Cursor.After, 10, 64)
	in, err := os.Open(filepath.Join(dir, inputFile))
	if err != nil {
		return false, err
	}
	defer in.Close()
	if _, err := in.Seek(off, io.SeekStart); err != nil {
		return false, err
	}
	br := bufio.NewReaderSize(in, 64<<10)
	var buf bytes.Buffer
	counts := *j.Match
	done := 0
	for done < 50 && j.Cursor.Member+done < j.Members {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return false, fmt.Errorf("bulk: input of job %s: %w", j.ID, err)
		}
		off += int64(len(line))
		o, err := e.matchOne(ctx, j, line)
		if err != nil {
			return false, err
		}
		switch o.Outcome {
		case outcomeMatched:
			counts.Matched++
		case outcomeNoMatch:
			counts.NotMatched++
		case outcomeConstraint:
			counts.ConsentConstrained++
		}
		b, err := json.Marshal(o)
		if err != nil {
			return false, err
		}
		buf.Write(b)
		buf.WriteByte('\n')
		done++
	}
	res := j.Results
	res.Name = resultsFile
	if err := e.appendFile(j.ID, res, buf.Bytes()); err != nil {
		return false, err
	}
	res.Size += int64(buf.Len())
	res.Count += int64(done)
	return true, e.checkpoint(ctx, j.ID, func(k *Job) {
		k.State = StateRunning
		k.Cursor = Cursor{Step: 1, Member: j.Cursor.Member + done, After: strconv.FormatInt(off, 10)}
		k.Results = res
		k.Match = &counts
	})
}

// matchOne decides one member: not matched (no member here, several, or a
// MemberBundle this server cannot read), consent-constrained (matched,
// but the Consent cannot be honoured), or matched (the Consent is stored
// and the member gets the identifier $member-match gives). A member's
// failure is that member's outcome, never the job's (PDex STU 2.1
// §pdex-154a); only the job's own faults (the database, a cancel) stop it.
func (e *Exporter) matchOne(ctx context.Context, j *Job, line []byte) (*memberOutcome, error) {
	var parts struct {
		Parameter []matchPart `json:"parameter"`
	}
	_ = json.Unmarshal(line, &parts)
	o := &memberOutcome{Outcome: outcomeNoMatch}
	for _, p := range parts.Parameter {
		switch p.Name {
		case "MemberPatient":
			o.Member = p.Resource
		case "CoverageToMatch":
			o.Coverage = p.Resource
		}
	}
	if why := e.usable(parts.Parameter, o); why != "" {
		e.log.Info("bulk: bulk-member-match: a member's bundle is not usable", "job", j.ID, "err", why)
		return o, nil
	}
	req, err := e.match.Parse(line)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		e.log.Info("bulk: bulk-member-match: a member's bundle is not usable", "job", j.ID, "err", err)
		return o, nil
	}
	ids, err := e.match.Find(ctx, req)
	if err != nil {
		return nil, err
	}
	if len(ids) != 1 {
		return o, nil
	}
	if err := e.match.CheckConsent(req.Consent); err != nil || !namesRecipient(req.Consent, j.RequesterOrg) {
		o.Outcome = outcomeConstraint
		return o, nil
	}
	m, err := e.match.Match(ctx, req, j.Requester)
	switch {
	case err == nil:
		o.Outcome, o.Patient = outcomeMatched, m.PatientID
	case errs.KindOf(err) == errs.Unprocessable:
		// Changed between Find and Match: as the latest answer says.
		e.log.Info("bulk: bulk-member-match: member not matched", "job", j.ID, "err", err)
	default:
		return nil, err
	}
	return o, nil
}

// matchPart is one part of a MemberBundle.
type matchPart struct {
	Name     string         `json:"name"`
	Resource map[string]any `json:"resource"`
}

// usable says why a member's bundle holds a resource that is not valid
// FHIR R4 ("" when every one is): such a member is not matched, as for any
// unusable bundle, and the job goes on. What o carries into the result
// Groups is made valid too, since an invalid contained resource would make
// the Group invalid and fail the job: a submitted Patient that is not
// valid is contained as a Patient with its id alone (how the requester
// finds its member again), a CoverageToMatch that is not is left out.
func (e *Exporter) usable(parts []matchPart, o *memberOutcome) string {
	model := e.st.Registry().Model()
	var why string
	for i, p := range parts {
		if p.Resource == nil {
			continue
		}
		want := map[string]string{"MemberPatient": "Patient", "CoverageToMatch": "Coverage", "CoverageToLink": "Coverage", "Consent": "Consent"}[p.Name]
		if typ, _ := p.Resource["resourceType"].(string); want != "" && typ != want {
			why = fmt.Sprintf("part[%d] %s: a %s, not a %s", i, p.Name, clipped(typ), want)
		} else if issues := model.Validate(p.Resource); len(issues) > 0 {
			why = fmt.Sprintf("part[%d] %s is not valid FHIR R4 (%d problems): %s: %s", i, p.Name, len(issues), issues[0].Path, issues[0].Message)
		} else {
			continue
		}
		switch p.Name {
		case "MemberPatient":
			bare := map[string]any{"resourceType": "Patient", "id": p.Resource["id"]}
			if bare["id"] == nil || len(model.Validate(bare)) > 0 {
				delete(bare, "id")
			}
			o.Member = bare
		case "CoverageToMatch":
			o.Coverage = nil
		}
	}
	return why
}

// clipped shortens a string from a request for a log line.
func clipped(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// namesRecipient reports whether a Consent's recipient actors (role IRCP,
// "information recipient"; all its actors when none has that role) name
// the organization org by identifier value. With no org known, or a
// Consent whose actors carry no identifier, there is nothing to hold it
// to and it passes.
func namesRecipient(c map[string]any, org string) bool {
	if org == "" {
		return true
	}
	prov, _ := c["provision"].(map[string]any)
	actors, _ := prov["actor"].([]any)
	var recipients, all []string
	for _, raw := range actors {
		a, _ := raw.(map[string]any)
		ref, _ := a["reference"].(map[string]any)
		ident, _ := ref["identifier"].(map[string]any)
		v, _ := ident["value"].(string)
		if v == "" {
			continue
		}
		all = append(all, v)
		if role, ok := a["role"].(map[string]any); ok && codes(role, "IRCP") {
			recipients = append(recipients, v)
		}
	}
	if len(recipients) == 0 {
		recipients = all
	}
	return len(recipients) == 0 || slices.Contains(recipients, org)
}

// matchFinish writes the three Groups (PDex PDexMemberMatchGroup and
// PDexMemberNoMatchGroup), owned by the requesting client, and the output
// files: Group NDJSON, and the Parameters envelope
// (pdex-parameters-multi-member-match-bundle-out) the reference
// implementation answers with.
func (e *Exporter) matchFinish(ctx context.Context, j *Job) error {
	dir := e.jobDir(j.ID)
	in, err := os.Open(filepath.Join(dir, resultsFile))
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	groups := map[string]*groupBuilder{}
	order := []string{outcomeMatched, outcomeNoMatch, outcomeConstraint}
	for _, c := range order {
		groups[c] = newGroup(c, j, e.now())
	}
	if in != nil {
		dec := json.NewDecoder(io.LimitReader(in, j.Results.Size))
		for {
			var o memberOutcome
			if err := dec.Decode(&o); err == io.EOF {
				break
			} else if err != nil {
				in.Close()
				return fmt.Errorf("bulk: results of job %s: %w", j.ID, err)
			}
			groups[o.Outcome].add(&o)
		}
		in.Close()
	}
	var groupLines, params bytes.Buffer
	var envelope []any
	var ids Groups
	var written []map[string]any
	err = e.st.Write(ctx, func(tx *store.Tx) error {
		if err := e.checkLease(tx, j.ID); err != nil {
			return err
		}
		written = written[:0]
		for _, c := range order {
			g := groups[c]
			// The matched Group is always written, so that its id is there
			// for $davinci-data-export; the others when they have members.
			if c != outcomeMatched && len(g.members) == 0 {
				continue
			}
			res := g.resource()
			raw, err := json.Marshal(res)
			if err != nil {
				return err
			}
			doc, err := e.srv.ParseResource(raw, "Group")
			if err != nil {
				return err
			}
			doc.ID = g.id
			v, err := tx.Put(doc, store.PutOptions{CreateOnly: true})
			if err != nil {
				return err
			}
			var stored map[string]any
			if err := json.Unmarshal(v.JSON, &stored); err != nil {
				return err
			}
			written = append(written, stored)
		}
		return nil
	})
	if err != nil {
		return err
	}
	names := map[string]string{outcomeMatched: "MatchedMembers", outcomeNoMatch: "NonMatchedMembers", outcomeConstraint: "ConsentConstrainedMembers"}
	for _, g := range written {
		b, _ := json.Marshal(g)
		groupLines.Write(b)
		groupLines.WriteByte('\n')
		code := groupCode(g)
		envelope = append(envelope, map[string]any{"name": names[code], "resource": g})
		switch code {
		case outcomeMatched:
			ids.Matched, _ = g["id"].(string)
		case outcomeNoMatch:
			ids.NotMatched, _ = g["id"].(string)
		case outcomeConstraint:
			ids.ConsentConstrained, _ = g["id"].(string)
		}
	}
	b, err := json.Marshal(map[string]any{"resourceType": "Parameters", "meta": map[string]any{"profile": []string{MatchParametersOut}}, "parameter": envelope})
	if err != nil {
		return err
	}
	params.Write(b)
	params.WriteByte('\n')
	files := []File{{Type: "Group", Name: "Group-1.ndjson", Count: int64(len(written)), Size: int64(groupLines.Len())},
		{Type: "Parameters", Name: "Parameters-1.ndjson", Count: 1, Size: int64(params.Len())}}
	if err := e.appendFile(j.ID, File{Name: files[0].Name}, groupLines.Bytes()); err != nil {
		return err
	}
	if err := e.appendFile(j.ID, File{Name: files[1].Name}, params.Bytes()); err != nil {
		return err
	}
	err = e.checkpoint(ctx, j.ID, func(k *Job) {
		k.State = StateComplete
		k.Files = files
		k.Match.Groups = ids
		k.Finished = e.now()
		k.Expires = k.Finished.Add(e.cfg.Retention)
	})
	if err == nil {
		e.log.Info("bulk: bulk-member-match complete", "job", j.ID, "matched", j.Match.Matched,
			"not_matched", j.Match.NotMatched, "consent_constrained", j.Match.ConsentConstrained, "group", ids.Matched)
	}
	return err
}

func groupCode(g map[string]any) string {
	code, _ := g["code"].(map[string]any)
	list, _ := code["coding"].([]any)
	if len(list) == 0 {
		return ""
	}
	c, _ := list[0].(map[string]any)
	s, _ := c["code"].(string)
	return s
}

// groupBuilder gathers one outcome's members.
type groupBuilder struct {
	id, code string
	j        *Job
	when     time.Time
	members  []any
	contain  []any
	names    map[string]bool
}

func newGroup(code string, j *Job, when time.Time) *groupBuilder {
	// Deterministic ids: a finish that is retried after a crash finds its
	// Groups written already (CreateOnly refuses them twice) only if it
	// committed, and then the job was complete too.
	return &groupBuilder{id: j.ID + "-" + code, code: code, j: j, when: when, names: map[string]bool{}}
}

// containedID returns a contained id for a submitted resource: its own id
// (PDex §pdex-152 keeps it) unless another member's took it already.
func (g *groupBuilder) containedID(want string) string {
	if want == "" {
		want = "member"
	}
	id := want
	for n := 2; g.names[id]; n++ {
		id = fmt.Sprintf("%s-%d", want, n)
	}
	g.names[id] = true
	return id
}

// add puts one member in the Group: the submitted Patient (and the
// CoverageToMatch, PDex §pdex-153) contained, and a member entry naming
// the member here (matched) or the contained Patient (the others: the
// member here is not disclosed).
func (g *groupBuilder) add(o *memberOutcome) {
	patient := containable(o.Member)
	pid := g.containedID(str(patient["id"]))
	patient["id"] = pid
	g.contain = append(g.contain, patient)
	exts := []any{map[string]any{"url": MatchParametersExtension, "valueReference": map[string]any{"reference": "#" + pid}}}
	if o.Coverage != nil {
		cov := containable(o.Coverage)
		cid := g.containedID("coverage-" + pid)
		cov["id"] = cid
		g.contain = append(g.contain, cov)
		exts = append(exts, map[string]any{"url": matchCoverageExt, "valueReference": map[string]any{"reference": "#" + cid}})
	}
	ref := "#" + pid
	if o.Outcome == outcomeMatched {
		ref = "Patient/" + o.Patient
	}
	g.members = append(g.members, map[string]any{"entity": map[string]any{"extension": exts, "reference": ref}})
}

// containable copies a submitted resource for Group.contained, without
// what contained resources may not carry (PDex §pdex-151a: meta.versionId,
// meta.lastUpdated, meta.security, nested contained).
func containable(res map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range res {
		out[k] = v
	}
	if out["resourceType"] == nil {
		out["resourceType"] = "Patient"
	}
	delete(out, "contained")
	if meta, ok := out["meta"].(map[string]any); ok {
		m := map[string]any{}
		for k, v := range meta {
			switch k {
			case "versionId", "lastUpdated", "security":
			default:
				m[k] = v
			}
		}
		if len(m) == 0 {
			delete(out, "meta")
		} else {
			out["meta"] = m
		}
	}
	return out
}

func str(v any) string { s, _ := v.(string); return s }

var groupDisplay = map[string]string{outcomeMatched: "Matched", outcomeNoMatch: "Not Matched", outcomeConstraint: "Consent Constraint"}

// resource is the Group as PDex STU 2.1 profiles it.
func (g *groupBuilder) resource() map[string]any {
	profile := NoMatchGroupProfile
	if g.code == outcomeMatched {
		profile = MatchGroupProfile
	}
	code := map[string]any{"coding": []any{map[string]any{"system": MatchResultSystem, "code": g.code, "display": groupDisplay[g.code]}}}
	client := map[string]any{"system": ClientIdentifierSystem, "value": g.j.Owner}
	meta := map[string]any{"profile": []string{profile}}
	if g.j.Owner != "" && g.j.Owner != "admin" {
		// The requesting client's alone (authz.OwnerTagSystem).
		meta["tag"] = []any{map[string]any{"system": authz.OwnerTagSystem, "code": g.j.Owner, "display": "the client that asked for this $bulk-member-match"}}
	}
	res := map[string]any{
		"resourceType": "Group",
		"meta":         meta,
		"identifier":   []any{client, map[string]any{"system": JobIdentifierSystem, "value": g.j.ID}},
		"type":         "person",
		"actual":       true,
		"code":         code,
		"name":         fmt.Sprintf("%s members of $bulk-member-match %s", groupDisplay[g.code], g.j.ID),
		"quantity":     len(g.members),
		"characteristic": []any{map[string]any{
			"code": code, "valueReference": map[string]any{"identifier": client}, "exclude": false,
			"period": map[string]any{"start": g.when.Format("2006-01-02")},
		}},
	}
	if g.j.Owner == "" {
		res["identifier"] = []any{map[string]any{"system": JobIdentifierSystem, "value": g.j.ID}}
		res["characteristic"] = []any{map[string]any{"code": code, "valueBoolean": true, "exclude": false,
			"period": map[string]any{"start": g.when.Format("2006-01-02")}}}
	}
	if len(g.contain) > 0 {
		res["contained"] = g.contain
	}
	if len(g.members) > 0 {
		res["member"] = g.members
	}
	return res
}
