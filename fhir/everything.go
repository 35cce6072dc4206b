package fhir

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// EverythingDefinition is the canonical URL of the OperationDefinition of
// Patient/$everything.
const EverythingDefinition = "http://hl7.org/fhir/OperationDefinition/Patient-everything"

// EverythingOptions configure Patient/$everything.
type EverythingOptions struct {
	// Withhold, when set, is asked once per patient whose data a request
	// gathers (and again for each page): the resources for which the
	// function it returns reports true are left out, for example the
	// sensitive data a member's consent does not release (mdm.Withhold).
	// A nil function withholds nothing. It applies to every caller, admin
	// included: $everything is how data leaves for another payer.
	Withhold func(tx *store.Tx, patient string) (func(v *store.Version) bool, error)
}

// EnableEverything registers Patient/{id}/$everything and the type-level
// Patient/$everything (GET, or POST with the parameters in the URL or a
// Parameters body). An instance answers the Patient, every resource of its
// compartment, and the resources those refer to that belong to no
// patient's compartment (Practitioner, Organization, Location,
// Medication...), as a searchset Bundle: the compartment as search mode
// match, the referenced resources as include. When the server follows MDM
// links (SetPatientLinks) the instance level also gathers the Patients
// linked to the patient and their compartments, so that the data ingested
// from another payer is part of the member's record; _mdm=false (HAPI
// FHIR's parameter) keeps to the patient's own compartment. _type keeps
// only the named types, _since only resources updated at or after the
// instant, _count sets the page size; an instance's result set is kept so
// that next links stay exact while others write. The type level gathers
// every patient's data, lazily page by page (see everythingTypePage), and
// is refused to member-scoped tokens; start and end (care dates) are not
// supported.
func (s *Server) EnableEverything(opts EverythingOptions) {
	s.AddOperation(&Operation{
		Name: "everything", Types: []string{"Patient"}, Type: true, Instance: true,
		Methods:       []string{http.MethodGet, http.MethodPost},
		Definition:    EverythingDefinition,
		Expensive:     true,
		Documentation: "Patient/{id}/$everything also gathers the Patients linked to the patient by MDM links (mutual Patient.link, one level) and their compartments, when this server follows them (see the :mdm search modifier); _mdm=false keeps to the patient's own compartment. Parameters: _since, _type, _count, _mdm. start and end are not supported.",
		Handler:       func(w http.ResponseWriter, r *http.Request) { s.everything(w, r, opts) },
	})
}

// everythingKind marks $everything result sets in the page cache: no
// search of a type can have it, so a cursor never crosses over.
const everythingKind = "Patient/$everything"

// everythingQuery is a parsed $everything request.
type everythingQuery struct {
	patient string          // "" at type level
	types   map[string]bool // _type; nil for all
	since   time.Time
	count   int
	noMDM   bool       // _mdm=false: the patient's own compartment only
	kept    url.Values // what the self link repeats
	ignored []string   // dropped under lenient handling
	params  url.Values // as asked, for the type level's later pages
	lenient bool
}

func (s *Server) everything(w http.ResponseWriter, r *http.Request, opts EverythingOptions) {
	id := chi.URLParam(r, "id")
	if id != "" {
		if err := checkID(id); err != nil {
			WriteError(w, r, errs.E("fhir.everything", errs.NotFound, err))
			return
		}
	}
	params, err := s.everythingParams(w, r)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	var body []byte
	// A result set kept for paging is written once the read has ended,
	// before the answer that links to it.
	ctx, kept := withKeptSets(r.Context())
	err = s.store.View(ctx, func(tx *store.Tx) error {
		if a := AccessFrom(tx.Context()); !a.CanRead("Patient") {
			return s.policy.Need(a, "Patient", authz.Read)
		}
		if c := params.Get("_cursor"); c != "" {
			body, err = s.everythingPage(tx, opts, id, c)
			return err
		}
		_, lenient := prefer(r)
		q, err := s.parseEverything(id, params, lenient)
		if err != nil {
			return err
		}
		body, err = s.everythingBundle(tx, opts, q)
		return err
	})
	if err == nil {
		err = s.pages.flush(r.Context(), kept)
	}
	if err != nil {
		WriteError(w, r, err)
		return
	}
	writeBody(w, http.StatusOK, body)
}

// everythingParams returns the request's parameters: the URL's, and for a
// POST those of a Parameters body.
func (s *Server) everythingParams(w http.ResponseWriter, r *http.Request) (url.Values, error) {
	params := r.URL.Query()
	if r.Method != http.MethodPost {
		return params, nil
	}
	if err := checkContentType(r); err != nil {
		return nil, err
	}
	raw, err := readBody(w, r, s.cfg.MaxBody)
	if err != nil || len(strings.TrimSpace(string(raw))) == 0 {
		return params, err
	}
	doc, err := s.parseResource(raw, "Parameters")
	if err != nil {
		return nil, err
	}
	list, _ := doc.Map["parameter"].([]any)
	for i, p := range list {
		pm, _ := p.(map[string]any)
		name, _ := pm["name"].(string)
		val := ""
		for k, v := range pm {
			if !strings.HasPrefix(k, "value") {
				continue
			}
			switch v := v.(type) {
			case string:
				val = v
			case json.Number:
				val = v.String()
			case bool:
				val = strconv.FormatBool(v)
			}
		}
		if val == "" {
			return nil, errs.E("fhir.everything", errs.Invalid, fmt.Sprintf("parameter %d (%s) has no primitive value", i+1, name),
				errs.Issue{Code: "value", Path: fmt.Sprintf("Parameters.parameter[%d]", i), Message: "a value[x] of a primitive type is required"})
		}
		params.Add(name, val)
	}
	return params, nil
}

func (s *Server) parseEverything(patient string, params url.Values, lenient bool) (*everythingQuery, error) {
	const op = "fhir.everything"
	q := &everythingQuery{patient: patient, count: s.cfg.DefaultCount, kept: url.Values{}, params: params, lenient: lenient}
	for name, vals := range params {
		switch name {
		case "_format", "_pretty":
		case "_count":
			n, err := parsePositive("_count", vals[len(vals)-1])
			if err != nil {
				return nil, err
			}
			q.count = min(n, s.cfg.MaxCount)
			q.kept.Set("_count", strconv.Itoa(q.count))
		case "_since":
			t, err := time.Parse(time.RFC3339Nano, vals[len(vals)-1])
			if err != nil {
				return nil, errs.E(op, errs.Invalid, fmt.Sprintf("_since %q is not an instant like 2024-01-02T15:04:05Z", vals[len(vals)-1]))
			}
			q.since = t
			q.kept.Set("_since", vals[len(vals)-1])
		case "_mdm":
			on, err := strconv.ParseBool(vals[len(vals)-1])
			if err != nil {
				return nil, errs.E(op, errs.Invalid, fmt.Sprintf("_mdm %q must be true or false", vals[len(vals)-1]))
			}
			if on && s.patientLinks() == nil {
				return nil, errs.E(op, errs.Invalid, "_mdm=true: this server does not follow MDM links")
			}
			if patient == "" && on {
				return nil, errs.E(op, errs.Invalid, "_mdm applies to Patient/{id}/$everything; the type level gathers every patient anyway")
			}
			q.noMDM = !on
			q.kept.Set("_mdm", strconv.FormatBool(on))
		case "_type":
			q.types = map[string]bool{}
			var all []string
			for _, v := range vals {
				for _, t := range strings.Split(v, ",") {
					t = strings.TrimSpace(t)
					if !s.model.IsResource(t) {
						return nil, errs.E(op, errs.Invalid, fmt.Sprintf("_type %q is not a resource type", t))
					}
					q.types[t] = true
					all = append(all, t)
				}
			}
			q.kept.Set("_type", strings.Join(all, ","))
		default:
			why := fmt.Sprintf("parameter %s is not supported by $everything (supported: _since, _type, _count, _mdm)", name)
			if name == "start" || name == "end" {
				why = "start and end (care dates) are not supported by this server's $everything; use _since and _type"
			}
			if !lenient {
				return nil, errs.E(op, errs.Invalid, why)
			}
			q.ignored = append(q.ignored, name)
		}
	}
	sort.Strings(q.ignored)
	return q, nil
}

// An entry of an $everything result set is "Type/id", the patient whose
// data brought it in, and whether it is a match (compartment) or an
// include (referenced), joined by NUL.
func everythingEntry(ref, patient string, include bool) string {
	mode := "m"
	if include {
		mode = "i"
	}
	return ref + "\x00" + patient + "\x00" + mode
}

func splitEntry(e string) (typ, id, patient string, include bool) {
	parts := strings.SplitN(e, "\x00", 3)
	if len(parts) != 3 {
		return "", "", "", false
	}
	typ, id, _ = strings.Cut(parts[0], "/")
	return typ, id, parts[1], parts[2] == "i"
}

// compartmentTypes are the types of the Patient compartment, Patient
// first, then by name, so that a member's record reads in a stable order.
func compartmentTypes() []string {
	var out []string
	for t := range spec.PatientCompartment() {
		if t != "Patient" {
			out = append(out, t)
		}
	}
	sort.Strings(out)
	return append([]string{"Patient"}, out...)
}

// gatherer collects an $everything result set inside one transaction.
type gatherer struct {
	s       *Server
	tx      *store.Tx
	sees    func(*store.Version) bool // the policy, for this request
	q       *everythingQuery
	opts    EverythingOptions
	seen    map[string]bool
	matches []string
	refs    []string // referenced, not yet read: "Type/id\x00patient"
	// bytes counts what matches hold; past the page cache's limit for one
	// result set, gathering stops (the result could not be paged).
	bytes int64
	// typeLevel is, at type level, the patient whose record is gathered:
	// what an earlier patient in id order brought is left out (see
	// servedEarlier).
	typeLevel string
}

// servedEarlier reports whether v, in the record of g.typeLevel, belongs
// to the compartment of a Patient with a smaller id that exists (its
// record, read earlier at type level, served it); a Patient is served only
// with its own record.
func (g *gatherer) servedEarlier(v *store.Version) bool {
	if v.Type == "Patient" {
		return v.ID != g.typeLevel
	}
	params := map[string]bool{}
	for _, p := range g.s.reg.CompartmentParams(v.Type) {
		params[p.Code] = true
	}
	for _, e := range g.tx.EntriesOf(v.Type, v.ID) {
		if !params[e.Param] {
			continue
		}
		ref, ok := search.ReferenceFromKey(e.Key)
		typ, id, _ := strings.Cut(ref, "/")
		if !ok || typ != "Patient" || id >= g.typeLevel {
			continue
		}
		if _, deleted, ok := g.tx.CurrentVersion("Patient", id); ok && !deleted {
			return true
		}
	}
	return false
}

// tooMany stops a gathering whose result set the page cache would refuse.
func (g *gatherer) tooMany() error {
	if g.bytes <= g.s.pages.maxSet() {
		return nil
	}
	what := "this Patient/$everything"
	if g.q.patient == "" {
		what = "type-level Patient/$everything"
	}
	return g.s.pages.errTooCostly(what, costlyResults, len(g.matches), g.bytes)
}

func (g *gatherer) wanted(v *store.Version) bool {
	if g.q.types != nil && !g.q.types[v.Type] {
		return false
	}
	if !g.q.since.IsZero() && v.LastUpdated.Before(g.q.since) {
		return false
	}
	return g.sees(v)
}

// record adds the compartments of patients, type by type, and notes what
// they refer to. The first patient is the one asked for; the others are
// Patients linked to it, which bring their compartments but, among
// Patients, only themselves.
func (g *gatherer) record(patients []string) error {
	withhold := make([]func(*store.Version) bool, len(patients))
	for i, p := range patients {
		var err error
		if withhold[i], err = g.withholder(p); err != nil {
			return err
		}
	}
	for _, typ := range compartmentTypes() {
		for i, p := range patients {
			if err := g.tx.Context().Err(); err != nil {
				return err
			}
			var ids []string
			switch {
			case typ != "Patient":
				ids = g.tx.CompartmentIDs(typ, p)
			case i == 0:
				// The patient first, then the records linked to it.
				ids = g.tx.CompartmentIDs(typ, p)
				ids = append([]string{p}, slices.DeleteFunc(ids, func(id string) bool { return id == p })...)
			default:
				ids = []string{p}
			}
			vs, err := g.tx.ReadCurrent(typ, ids)
			if err != nil {
				return err
			}
			for _, v := range vs {
				g.add(v, p, withhold[i])
			}
			if err := g.tooMany(); err != nil {
				return err
			}
		}
	}
	return nil
}

// add adds v, brought in by patient's compartment, unless it is withheld,
// left out by the parameters, or outside what the request may read.
func (g *gatherer) add(v *store.Version, patient string, withhold func(*store.Version) bool) {
	ref := v.Type + "/" + v.ID
	if withhold != nil && withhold(v) {
		return
	}
	if g.typeLevel != "" && g.servedEarlier(v) {
		return
	}
	if !g.sees(v) {
		return // what the request may not read brings nothing in, not even its references
	}
	// References are followed even from resources _type or _since leave
	// out: what they point to may be wanted.
	g.noteReferences(v, patient)
	if g.seen[ref] || !g.wanted(v) {
		return
	}
	g.seen[ref] = true
	e := everythingEntry(ref, patient, false)
	g.matches = append(g.matches, e)
	g.bytes += 16 + int64(len(e)+15)&^15
}

func (g *gatherer) withholder(p string) (func(*store.Version) bool, error) {
	return g.s.withholder(g.tx, g.opts, g.q.patient, p)
}

// withholder is what the Withhold hook keeps back of patient p's data in
// the record of root: p's own consent decides, and when p is a Patient
// linked to root, root's consent too (the member's consent covers their
// whole record). root is "" at type level.
func (s *Server) withholder(tx *store.Tx, opts EverythingOptions, root, p string) (func(*store.Version) bool, error) {
	if opts.Withhold == nil {
		return nil, nil
	}
	w, err := opts.Withhold(tx, p)
	if err != nil || root == "" || root == p {
		return w, err
	}
	rw, err := opts.Withhold(tx, root)
	switch {
	case err != nil:
		return nil, err
	case w == nil:
		return rw, nil
	case rw == nil:
		return w, nil
	}
	return func(v *store.Version) bool { return w(v) || rw(v) }, nil
}

// noteReferences records the relative references of v to resources of
// types outside the Patient compartment: the practitioners, organizations,
// locations, medications... that the member's record needs to be read.
// Resources of compartment types are never followed, so that another
// member's data cannot come in through a reference.
func (g *gatherer) noteReferences(v *store.Version, patient string) {
	var doc any
	if err := json.Unmarshal(v.JSON, &doc); err != nil {
		return
	}
	walkReferences(doc, func(ref string) { // transaction.go's walker
		ref = search.NormalizeReference(ref, g.s.cfg.BaseURL)
		typ, id, ok := strings.Cut(ref, "/")
		if !ok || strings.Contains(id, "/") || checkID(id) != nil || !g.s.model.IsResource(typ) || g.s.reg.InPatientCompartment(typ) {
			return
		}
		if !g.seen["ref:"+ref] {
			g.seen["ref:"+ref] = true
			g.refs = append(g.refs, ref+"\x00"+patient)
		}
	})
}

// includes reads the referenced resources and adds those the request may
// have, after the matches, in reference order.
func (g *gatherer) includes() ([]string, error) {
	sort.Strings(g.refs)
	keys := make([]store.Key, 0, len(g.refs))
	for _, r := range g.refs {
		ref, _, _ := strings.Cut(r, "\x00")
		if !g.seen[ref] {
			typ, id, _ := strings.Cut(ref, "/")
			keys = append(keys, store.Key{Type: typ, ID: id})
		}
	}
	g.tx.Prefetch(keys)
	var out []string
	withholders := map[string]func(*store.Version) bool{}
	for _, r := range g.refs {
		ref, p, _ := strings.Cut(r, "\x00")
		if g.seen[ref] {
			continue
		}
		typ, id, _ := strings.Cut(ref, "/")
		v, err := g.tx.Read(typ, id)
		if err != nil {
			continue // dangling or deleted: nothing to include
		}
		w, ok := withholders[p]
		if !ok {
			if w, err = g.withholder(p); err != nil {
				return nil, err
			}
			withholders[p] = w
		}
		if (w != nil && w(v)) || !g.wanted(v) {
			continue
		}
		g.seen[ref] = true
		out = append(out, everythingEntry(ref, p, true))
	}
	return out, nil
}

func (s *Server) everythingBundle(tx *store.Tx, opts EverythingOptions, q *everythingQuery) ([]byte, error) {
	a := AccessFrom(tx.Context())
	g := &gatherer{s: s, tx: tx, sees: s.policy.Seer(tx, a), q: q, opts: opts, seen: map[string]bool{}}
	if q.patient != "" {
		if _, err := s.policy.Current(tx, a, "Patient", q.patient); err != nil {
			return nil, err
		}
		patients := []string{q.patient}
		if !q.noMDM {
			// The Patients linked to it, and their compartments, are the
			// same person's record.
			patients = append(patients, s.policy.Linked(tx, q.patient)...)
		}
		if err := g.record(patients); err != nil {
			return nil, err
		}
	} else {
		if a.Member() {
			return nil, errs.E("fhir.everything", errs.Permission,
				"type-level Patient/$everything gathers every member's data; a token bound to one patient must use Patient/{id}/$everything")
		}
		return s.everythingTypePage(tx, opts, q, nil, "", nil)
	}
	inc, err := g.includes()
	if err != nil {
		return nil, err
	}
	entries := append(g.matches, inc...)
	self := s.everythingURL(q.patient)
	if enc := q.kept.Encode(); enc != "" {
		self += "?" + enc
	}
	kept := url.Values{"patient": {q.patient}}
	if len(q.ignored) > 0 {
		kept["ignored"] = q.ignored
	}
	sn := &snapshot{typ: everythingKind, ids: entries, self: self, binding: a.Key(),
		query: &search.Query{Type: "Patient", Count: q.count, Kept: kept}}
	var key string
	if len(entries) > q.count {
		var err error
		if key, err = s.pages.put(tx, sn, "this $everything"); err != nil {
			return nil, err
		}
	}
	return s.renderEverything(tx, opts, sn, key, 0)
}

func (s *Server) everythingURL(patient string) string {
	if patient == "" {
		return s.cfg.BaseURL + "/Patient/$everything"
	}
	return s.cfg.BaseURL + "/Patient/" + patient + "/$everything"
}

// everythingPage renders a later page of a kept result set; cursor is
// "<key>.<offset>" (at type level, see everythingTypeCursor). The cursor only works with the access rights and the
// patient it was made for.
func (s *Server) everythingPage(tx *store.Tx, opts EverythingOptions, patient, cursor string) ([]byte, error) {
	key, off, ok := strings.Cut(cursor, ".")
	bad := errs.E("fhir.everything", errs.Invalid, fmt.Sprintf("%q is not a page cursor of this server", cursor))
	if !ok {
		return nil, bad
	}
	if patient == "" {
		return s.everythingTypeCursor(tx, opts, key, off, bad)
	}
	offset, err := strconv.Atoi(off)
	if err != nil || offset < 0 {
		return nil, bad
	}
	sn := s.pages.get(tx, key)
	if sn == nil || sn.typ != everythingKind || sn.query.Kept.Get("patient") != patient {
		return nil, s.pages.errGone("fhir.everything", key, "this $everything result", "ask again")
	}
	if sn.binding != AccessFrom(tx.Context()).Key() {
		return nil, errs.E("fhir.everything", errs.Permission, "this page belongs to a request made with other access rights")
	}
	return s.renderEverything(tx, opts, sn, key, offset)
}

func (s *Server) everythingPageURL(sn *snapshot, key string, offset int) string {
	return fmt.Sprintf("%s?_cursor=%s.%d", s.everythingURL(sn.query.Kept.Get("patient")), key, offset)
}

// renderEverything renders one page of a kept result set: the current
// version of each entry (left out if deleted since, or withheld since),
// with self, first, next, previous and last links.
func (s *Server) renderEverything(tx *store.Tx, opts EverythingOptions, sn *snapshot, key string, offset int) ([]byte, error) {
	count := sn.query.Count
	b := newBundle("searchset")
	total := len(sn.ids)
	b.Total = &total
	self := sn.self
	if offset > 0 {
		self = s.everythingPageURL(sn, key, offset)
	}
	b.Link = append(b.Link, BundleLink{Relation: "self", URL: self})
	offset = min(offset, len(sn.ids))
	end := min(offset+count, len(sn.ids))
	if key != "" {
		b.Link = append(b.Link, BundleLink{Relation: "first", URL: s.everythingPageURL(sn, key, 0)})
		if end < len(sn.ids) {
			b.Link = append(b.Link, BundleLink{Relation: "next", URL: s.everythingPageURL(sn, key, end)})
		}
		if offset > 0 {
			b.Link = append(b.Link, BundleLink{Relation: "previous", URL: s.everythingPageURL(sn, key, max(0, offset-count))})
		}
		last := ((len(sn.ids) - 1) / count) * count
		b.Link = append(b.Link, BundleLink{Relation: "last", URL: s.everythingPageURL(sn, key, last)})
	}
	return s.everythingEntries(tx, opts, b, sn, sn.ids[offset:end])
}

// everythingEntries adds to b the current version of each entry (left out
// if deleted since, withheld since, or no longer the requester's) and
// encodes b.
func (s *Server) everythingEntries(tx *store.Tx, opts EverythingOptions, b *Bundle, sn *snapshot, ids []string) ([]byte, error) {
	withholders := map[string]func(*store.Version) bool{}
	// Every resource is checked again as the page is served: it may have
	// changed hands since the result set was made.
	sees := s.policy.Seer(tx, AccessFrom(tx.Context()))
	// The page's resources, with the index entries the check of the
	// member's compartment reads, at once.
	keys := make([]store.Key, len(ids))
	for i, e := range ids {
		typ, id, _, _ := splitEntry(e)
		keys[i] = store.Key{Type: typ, ID: id}
	}
	tx.Prefetch(keys)
	for _, e := range ids {
		typ, id, patient, include := splitEntry(e)
		v, err := tx.Read(typ, id)
		if err != nil || !sees(v) {
			continue // deleted since the result set was made, or no longer the requester's
		}
		w, ok := withholders[patient]
		if !ok {
			if w, err = s.withholder(tx, opts, sn.query.Kept.Get("patient"), patient); err != nil {
				return nil, err
			}
			withholders[patient] = w
		}
		if w != nil && w(v) {
			continue
		}
		mode := "match"
		if include {
			mode = "include"
		}
		b.Entry = append(b.Entry, BundleEntry{FullURL: s.fullURL(v), Resource: v.JSON, Search: &EntrySearch{Mode: mode}, compact: true})
	}
	if ignored := sn.query.Kept["ignored"]; len(ignored) > 0 {
		oo, _ := json.Marshal(&OperationOutcome{ResourceType: "OperationOutcome", Issue: []OOIssue{{
			Severity: "warning", Code: "not-supported",
			Diagnostics: "these parameters are not supported and were ignored: " + strings.Join(ignored, ", "),
		}}})
		b.Entry = append(b.Entry, BundleEntry{Resource: oo, Search: &EntrySearch{Mode: "outcome"}})
	}
	return b.Encode()
}

// everythingPosition is where a page of type-level $everything ends: the
// patient whose record it was serving and how many of that record's
// entries were served.
type everythingPosition struct {
	patient string
	skip    int
}

// everythingTypeCursor renders a later page of type-level $everything:
// pos is "<patient>!<skip>", query-escaped.
func (s *Server) everythingTypeCursor(tx *store.Tx, opts EverythingOptions, key, pos string, bad error) ([]byte, error) {
	var at *everythingPosition // nil: the first page
	if pos != "" {
		pe, sk, ok := strings.Cut(pos, "!")
		patient, err := url.QueryUnescape(pe)
		skip, err2 := strconv.Atoi(sk)
		if !ok || err != nil || err2 != nil || skip < 0 || patient == "" {
			return nil, bad
		}
		at = &everythingPosition{patient: patient, skip: skip}
	}
	sn := s.pages.get(tx, key)
	if sn == nil || sn.typ != everythingKind || sn.params == nil {
		return nil, s.pages.errGone("fhir.everything", key, "this $everything result", "ask again")
	}
	a := AccessFrom(tx.Context())
	if sn.binding != a.Key() {
		return nil, errs.E("fhir.everything", errs.Permission, "this page belongs to a request made with other access rights")
	}
	q, err := s.parseEverything("", sn.params, sn.lenient)
	if err != nil {
		return nil, err
	}
	return s.everythingTypePage(tx, opts, q, sn, key, at)
}

// everythingTypePage renders a page of type-level $everything lazily: the
// Patients are read in id order from the position (nil for the first
// page), each patient's record gathered (its compartment, then the
// resources it refers to outside any compartment) and served until the
// page is full. Memory is bounded by the page and the largest single
// record, never by the database. A resource in the compartments of
// several Patients is served with the first of them in id order that
// exists; a resource the records refer to is included with each record
// that refers to it. No total is given unless the first page holds
// everything.
func (s *Server) everythingTypePage(tx *store.Tx, opts EverythingOptions, q *everythingQuery, sn *snapshot, key string, pos *everythingPosition) ([]byte, error) {
	a := AccessFrom(tx.Context())
	sees := s.policy.Seer(tx, a)
	viaCursor := sn != nil
	var page []string // everythingEntry values
	var next *everythingPosition
	start, resume := "", pos != nil
	for next == nil {
		// The next Patients in id order: the position's own first (when it
		// still exists), then those after it.
		var batch []string
		if resume {
			if _, deleted, ok := tx.CurrentVersion("Patient", pos.patient); ok && !deleted {
				batch = append(batch, pos.patient)
			}
			start, resume = pos.patient, false
		}
		tx.ScanCurrent("Patient", start, func(id string, _ time.Time, _ []byte) bool {
			batch = append(batch, strings.Clone(id))
			return len(batch) < 64
		})
		if len(batch) == 0 {
			break
		}
		for _, p := range batch {
			if err := tx.Context().Err(); err != nil {
				return nil, err
			}
			entries, err := s.patientRecord(tx, opts, q, sees, p)
			if err != nil {
				return nil, err
			}
			skip := 0
			if pos != nil && p == pos.patient {
				skip = min(pos.skip, len(entries))
			}
			rest := entries[skip:]
			if len(rest) == 0 {
				continue
			}
			if len(page) == q.count {
				next = &everythingPosition{patient: p, skip: skip}
				break
			}
			take := min(len(rest), q.count-len(page))
			page = append(page, rest[:take]...)
			if take < len(rest) {
				next = &everythingPosition{patient: p, skip: skip + take}
				break
			}
		}
		start = batch[len(batch)-1]
	}
	var err error
	if sn == nil {
		self := s.everythingURL("")
		if enc := q.kept.Encode(); enc != "" {
			self += "?" + enc
		}
		kept := url.Values{"patient": {""}}
		if len(q.ignored) > 0 {
			kept["ignored"] = q.ignored
		}
		sn = &snapshot{typ: everythingKind, params: q.params, lenient: q.lenient, self: self, binding: a.Key(),
			query: &search.Query{Type: "Patient", Count: q.count, Kept: kept}}
		if next != nil {
			if key, err = s.pages.put(tx, sn, "this type-level $everything's parameters"); err != nil {
				return nil, err
			}
		}
	}
	b := newBundle("searchset")
	if pos == nil && next == nil {
		total := len(page)
		b.Total = &total
	}
	self := sn.self
	if viaCursor {
		self = s.everythingTypeURL(key, pos)
	}
	b.Link = append(b.Link, BundleLink{Relation: "self", URL: self})
	if key != "" {
		b.Link = append(b.Link, BundleLink{Relation: "first", URL: s.everythingTypeURL(key, nil)})
		if next != nil {
			b.Link = append(b.Link, BundleLink{Relation: "next", URL: s.everythingTypeURL(key, next)})
		}
	}
	return s.everythingEntries(tx, opts, b, sn, page)
}

// everythingTypeURL is the link to the page of type-level $everything at
// p (nil for the first).
func (s *Server) everythingTypeURL(key string, p *everythingPosition) string {
	if p == nil {
		return s.everythingURL("") + "?_cursor=" + url.QueryEscape(key+".")
	}
	return s.everythingURL("") + "?_cursor=" + url.QueryEscape(key+"."+url.QueryEscape(p.patient)+"!"+strconv.Itoa(p.skip))
}

// patientRecord gathers the $everything entries of one patient's record at
// type level: its compartment (less what an earlier patient in id order
// served) and the resources it refers to.
func (s *Server) patientRecord(tx *store.Tx, opts EverythingOptions, q *everythingQuery, sees func(*store.Version) bool, p string) ([]string, error) {
	g := &gatherer{s: s, tx: tx, sees: sees, q: q, opts: opts, seen: map[string]bool{}, typeLevel: p}
	if err := g.record([]string{p}); err != nil {
		return nil, err
	}
	inc, err := g.includes()
	if err != nil {
		return nil, err
	}
	return append(g.matches, inc...), nil
}
