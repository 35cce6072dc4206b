package authz

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// maxDepth bounds how far a rule follows references (a Binary whose
// securityContext is a DocumentReference in the compartment, a Slot whose
// Schedule names the member...).
const maxDepth = 3

// Policy decides, for a principal, each interaction on each resource (see
// the package comment). Its methods are safe for concurrent use.
type Policy struct {
	reg  *search.Registry
	base string

	mu     sync.RWMutex
	linked func(tx *store.Tx, member string) []string
}

// New builds the policy over the search registry the store indexes with;
// base is the FHIR base URL, under which absolute references are local.
func New(reg *search.Registry, base string) *Policy {
	return &Policy{reg: reg, base: strings.TrimRight(base, "/")}
}

// LinkPatients sets the function that names the Patients linked to a
// member (MDM links): their compartments are the member's too. It is asked
// inside the request's transaction; nil links none.
func (pol *Policy) LinkPatients(fn func(tx *store.Tx, member string) []string) {
	pol.mu.Lock()
	defer pol.mu.Unlock()
	pol.linked = fn
}

// Linked returns the Patients linked to Patient/patient as the same
// person's record (LinkPatients), without patient itself; nil when none
// or when links are not followed.
func (pol *Policy) Linked(tx *store.Tx, patient string) []string {
	pol.mu.RLock()
	linked := pol.linked
	pol.mu.RUnlock()
	if linked == nil || patient == "" {
		return nil
	}
	var out []string
	for _, id := range linked(tx, patient) {
		if id != "" && id != patient && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// Patients returns the Patients whose compartments make up p's record: the
// member's own first, then those linked to it; nil for a principal that is
// not a member.
func (pol *Policy) Patients(tx *store.Tx, p *Principal) []string {
	if !p.Member() {
		return nil
	}
	return append([]string{p.Patient}, pol.Linked(tx, p.Patient)...)
}

// Need checks that p's scopes grant need on typ: a Permission error naming
// the scope that would, or nil. Members are also refused the types with no
// rule (Denied).
func (pol *Policy) Need(p *Principal, typ string, need Perm) error {
	if p == nil {
		return nil
	}
	if p.Member() && RuleOf(typ) == Denied {
		return errs.E("authz.need", errs.Permission, fmt.Sprintf("%s resources are not available to member-scoped tokens", typ))
	}
	for _, one := range []Perm{Create, Read, Update, Delete, Search} {
		if need&one != 0 && !p.Allows(typ, one) {
			return errs.E("authz.need", errs.Permission, fmt.Sprintf(
				"the token's scopes do not allow this %s: it needs %s/%s.%s (or a v1 equivalent)", one.Verb(), p.level(), typ, one))
		}
	}
	return nil
}

// NotFound is the error for typ/id that does not exist, or that p may not
// see: the store's words for an unknown id, so the two cannot be told
// apart.
func NotFound(typ, id string) error {
	return errs.E("authz", errs.NotFound, fmt.Sprintf("%s/%s is not known", typ, id))
}

// NoVersion is the error for a version that does not exist, or that p may
// not see: the store's words.
func NoVersion(typ, id string, vid int64) error {
	return errs.E("authz", errs.NotFound, fmt.Sprintf("%s/%s has no version %d", typ, id, vid))
}

// Current reads typ/id as p may have it: NotFound (as for an unknown id)
// when it never existed or p may not see it; Gone with the deleted version
// when it was deleted and p may see its last version; otherwise the
// current version. The type's scopes are Need's business, not checked
// here.
func (pol *Policy) Current(tx *store.Tx, p *Principal, typ, id string) (*store.Version, error) {
	v, err := tx.Read(typ, id)
	if v == nil {
		if errs.Is(err, errs.NotFound) {
			return nil, NotFound(typ, id)
		}
		return nil, err
	}
	if p.Member() && !pol.view(tx, p).owned(v, maxDepth) {
		return nil, NotFound(typ, id)
	}
	if foreign(p, v) {
		return nil, NotFound(typ, id)
	}
	return v, err
}

// CanSee reports whether p may see version v (current or past): its type
// is readable by p's scopes and, for a member, it belongs to their record
// by its type's rule. A deletion belongs to the owner of the version
// before it.
func (pol *Policy) CanSee(tx *store.Tx, p *Principal, v *store.Version) bool {
	if p == nil {
		return true
	}
	if !p.CanRead(v.Type) || foreign(p, v) {
		return false
	}
	return !p.Member() || pol.view(tx, p).owned(v, maxDepth)
}

// Seer returns CanSee bound to one transaction and principal, with what it
// learns kept between calls: for checking many resources at once (a page,
// its includes, an $everything result).
func (pol *Policy) Seer(tx *store.Tx, p *Principal) func(v *store.Version) bool {
	if p == nil {
		return func(*store.Version) bool { return true }
	}
	if !p.Member() {
		return func(v *store.Version) bool { return p.CanRead(v.Type) && !foreign(p, v) }
	}
	w := pol.view(tx, p)
	return func(v *store.Version) bool { return p.CanRead(v.Type) && !foreign(p, v) && w.owned(v, maxDepth) }
}

// Confine prepares q, a search p makes, so that it finds only what p may
// see: a member's searches of compartment types are confined to the
// member's compartments, and the targets of chained parameters are only
// resources p may see (so a chain cannot test another member's data). The
// ids the search returns still go through Filter.
func (pol *Policy) Confine(tx *store.Tx, p *Principal, q *search.Query) {
	pol.expandMDM(tx, p, q)
	if p == nil {
		return
	}
	// Another client's resources (OwnerTagSystem) are no chain's target.
	ours := func(typ, id string) bool {
		if !OwnedTypes[typ] {
			return true
		}
		v, err := tx.Read(typ, id)
		return v != nil && err == nil && !foreign(p, v)
	}
	if !p.Member() {
		q.Visible = func(typ, id string) bool { return p.CanRead(typ) && ours(typ, id) }
		return
	}
	w := pol.view(tx, p)
	if RuleOf(q.Type) == Compartment {
		q.Compartment, q.Linked = w.pats[0], w.pats[1:]
	}
	q.Visible = func(typ, id string) bool {
		if !p.CanRead(typ) || !ours(typ, id) {
			return false
		}
		if _, deleted, ok := tx.CurrentVersion(typ, id); !ok || deleted {
			return false
		}
		if RuleOf(typ) == Compartment {
			// As a read of it would decide (a Patient too: the record
			// holds the Patients that link to the member).
			return w.inCompartment(&resource{typ: typ, id: id, current: true, tx: tx})
		}
		return w.refOwned(typ+"/"+id, maxDepth)
	}
}

// MayChooseID reports whether p may create a resource of typ with an id
// of its choosing (update as create, FHIR R4 http.html#upsert). Not where
// a stored resource of typ can be hidden from p: a member's updates (any
// patient-bound type), and a client's of the OwnedTypes (another client's
// resource may hold the id). There, an update of an id p may not see
// answers as the update of an id that does not exist, and neither
// creates, so that the answer never tells them apart.
func (pol *Policy) MayChooseID(p *Principal, typ string) bool {
	return p == nil || (!p.Member() && !OwnedTypes[typ])
}

// expandMDM widens the :mdm values of q (search.ModifierMDM) by the links
// p may know of: every link for an unrestricted request or a client that
// may read Patients; for a member, only among their own Patients, so that
// whom another person is linked to never changes a member's answer.
func (pol *Policy) expandMDM(tx *store.Tx, p *Principal, q *search.Query) {
	if !q.HasMDM() {
		return
	}
	switch {
	case p.Member():
		pats := pol.Patients(tx, p)
		q.ExpandMDM(func(patient string) []string {
			if !slices.Contains(pats, patient) {
				return nil
			}
			return pats
		})
	case p.CanRead("Patient"):
		q.ExpandMDM(func(patient string) []string { return pol.Linked(tx, patient) })
	default:
		q.ExpandMDM(func(string) []string { return nil })
	}
}

// Filter keeps the ids of typ (a search's result) that p may see, in
// order. Compartment and public types were confined by Confine already.
func (pol *Policy) Filter(tx *store.Tx, p *Principal, typ string, ids []string) ([]string, error) {
	if p != nil && OwnedTypes[typ] {
		// Another client's resources are not found.
		kept := ids[:0:0]
		for _, id := range ids {
			if v, err := tx.Read(typ, id); err == nil && !foreign(p, v) {
				kept = append(kept, id)
			}
		}
		ids = kept
	}
	if !p.Member() {
		return ids, nil
	}
	switch RuleOf(typ) {
	case Compartment, Public:
		return ids, nil
	}
	w := pol.view(tx, p)
	out := ids[:0:0]
	for _, id := range ids {
		if _, deleted, ok := tx.CurrentVersion(typ, id); !ok || deleted {
			continue
		}
		// Current: the rules read the index, and the JSON only if they
		// need it.
		if w.ownedRes(&resource{typ: typ, id: id, current: true, tx: tx}, maxDepth) {
			out = append(out, id)
		}
	}
	return out, nil
}

// MayWrite checks a restricted write (create, update or delete): only an
// unrestricted request (the server's MDM, an admin) may add, change or
// remove Patient.link, or delete a Patient that has links, since the links
// decide whose record a Patient's data is. For a member:
// before is the current version (nil on create; a deletion stands for the
// version before it), after the resource as it will be written (nil for a
// delete) with its index entries. Both must lie wholly in the member's
// record (see the package comment). pending reports references to
// resources the same transaction writes, which are checked when they are
// written. The error is a Permission whose words name only what the
// request itself sent or what the member may see.
func (pol *Policy) MayWrite(tx *store.Tx, p *Principal, before *store.Version, after *store.Doc, pending func(ref string) bool) error {
	if p == nil {
		return nil
	}
	if err := linksKept(before, after); err != nil {
		return err
	}
	if !p.Member() {
		return nil
	}
	const op = "authz.write"
	if typ := writtenType(before, after); !patientBound(typ) {
		return errs.E(op, errs.Permission, fmt.Sprintf(
			"%s resources hold no patient's data: a member-scoped token cannot write them", typ))
	}
	// Writes stay in the member's own compartment: the records of the
	// Patients linked to them are read as theirs, never written.
	w := &view{pol: pol, tx: tx, p: p, pats: []string{p.Patient}, memo: map[string]bool{}}
	if before != nil {
		if b := w.live(before); b != nil && (!w.owned(b, maxDepth) || w.foreignRef(b.Type, b.JSON, nil) != "") {
			return errs.E(op, errs.Permission, fmt.Sprintf(
				"%s/%s lies outside the member's own compartment or is shared with another patient's record: a member-scoped token cannot change it", b.Type, b.ID))
		}
	}
	if after == nil {
		return nil
	}
	r := &resource{typ: after.Type, id: after.ID, json: after.JSON, m: after.Map, entries: after.Entries}
	if after.Type == "Subscription" && !w.ownedRes(r, maxDepth) {
		criteria, _ := after.Map["criteria"].(string)
		typ, _, _ := strings.Cut(criteria, "?")
		example := "Observation?subject=Patient/" + p.Patient
		if typ == "Patient" {
			example = "Patient?_id=" + p.Patient
		} else if params := spec.PatientCompartmentParams(typ); len(params) > 0 && params[0] != spec.CompartmentSelf {
			example = typ + "?" + params[0] + "=Patient/" + p.Patient
		}
		msg := fmt.Sprintf("%q does not confine the Subscription to the member's own record: a member's Subscription must be a search of a Patient compartment type that names Patient/%s in a compartment parameter, such as %s",
			criteria, p.Patient, example)
		return errs.E(op, errs.Permission, msg, errs.Issue{Code: "forbidden", Path: "Subscription.criteria", Message: msg})
	}
	if !w.ownedRes(r, maxDepth) {
		return errs.E(op, errs.Permission, fmt.Sprintf(
			"the %s does not belong to the compartment of Patient/%s, the only patient this token may write for", after.Type, p.Patient))
	}
	if ref := w.foreignRef(after.Type, after.JSON, pending); ref != "" {
		return errs.E(op, errs.Permission, fmt.Sprintf(
			"the %s refers to %s: a member may write only resources that lie wholly in their own record (every Patient it refers to the member, every other patient-bound resource one they may read)", after.Type, ref))
	}
	return nil
}

func writtenType(before *store.Version, after *store.Doc) string {
	if after != nil {
		return after.Type
	}
	if before != nil {
		return before.Type
	}
	return ""
}

// view is one principal's view of one transaction, remembering what it
// learnt about current resources.
type view struct {
	pol  *Policy
	tx   *store.Tx
	p    *Principal
	pats []string
	memo map[string]bool
}

func (pol *Policy) view(tx *store.Tx, p *Principal) *view {
	return &view{pol: pol, tx: tx, p: p, pats: pol.Patients(tx, p), memo: map[string]bool{}}
}

// resource is a resource version as the rules read it.
type resource struct {
	typ, id string
	json    []byte // nil with tx set: read when first needed
	tx      *store.Tx
	m       map[string]any
	entries []search.Entry
	current bool // entries may be read from the store's index
}

func (r *resource) decoded() map[string]any {
	if r.m == nil && r.json == nil && r.tx != nil {
		if v, err := r.tx.Read(r.typ, r.id); err == nil {
			r.json = v.JSON
		}
	}
	if r.m == nil {
		d := json.NewDecoder(bytes.NewReader(r.json))
		d.UseNumber()
		if d.Decode(&r.m) != nil || r.m == nil {
			r.m = map[string]any{}
		}
	}
	return r.m
}

// live returns v, or for a deletion the version before it that is not a
// deletion (nil when there is none).
func (w *view) live(v *store.Version) *store.Version {
	for v != nil && v.Deleted {
		if v.VersionID <= 1 {
			return nil
		}
		prev, err := w.tx.VRead(v.Type, v.ID, v.VersionID-1)
		if prev == nil || (err != nil && !errs.Is(err, errs.Gone)) {
			return nil
		}
		v = prev
	}
	return v
}

// owned reports whether version v belongs to the member's record by its
// type's rule.
func (w *view) owned(v *store.Version, depth int) bool {
	if v = w.live(v); v == nil {
		return false
	}
	vid, deleted, ok := w.tx.CurrentVersion(v.Type, v.ID)
	r := &resource{typ: v.Type, id: v.ID, json: v.JSON, current: ok && !deleted && vid == v.VersionID}
	return w.ownedRes(r, depth)
}

func (w *view) ownedRes(r *resource, depth int) bool {
	switch RuleOf(r.typ) {
	case Public:
		return true
	case Compartment:
		return w.inCompartment(r)
	case ProvenanceRule:
		return w.inCompartment(r) || w.allOwned(w.targets(r), depth)
	case SecurityContext:
		ref := refsAt(r.decoded(), "securityContext")
		return len(ref) == 1 && w.refOwned(ref[0], depth)
	case BundleSubject:
		return w.bundleOwned(r.decoded(), depth)
	case DevicePatient:
		ref := refsAt(r.decoded(), "patient")
		return len(ref) == 0 || (len(ref) == 1 && w.refOwned(ref[0], depth))
	case SubscriptionCriteria:
		return w.criteriaConfined(r.decoded())
	case References:
		n := 0
		ok := true
		walkReferences(r.decoded(), func(ref string) {
			typ, _, local := w.local(ref)
			if !ok || !local || !patientBound(typ) {
				return
			}
			n++
			ok = w.refOwned(ref, depth)
		})
		return ok && n > 0
	}
	return false
}

// inCompartment reports whether r is in the member's record: their
// compartment, the compartments of the Patients linked to them for every
// type but Patient, and those linked Patients themselves
// (search.Registry.InRecord).
func (w *view) inCompartment(r *resource) bool {
	entries := r.entries
	if entries == nil {
		if r.current {
			entries = w.tx.EntriesOf(r.typ, r.id)
		} else {
			entries = w.pol.reg.Extract(r.typ, r.decoded())
		}
	}
	return w.pol.reg.InRecord(r.typ, r.id, entries, w.pats[0], w.pats[1:])
}

// targets returns a Provenance's targets: from the index when r is
// current (no decoding), from its JSON otherwise.
func (w *view) targets(r *resource) []string {
	if !r.current || r.entries != nil {
		return refsAt(r.decoded(), "target")
	}
	var out []string
	for _, e := range w.tx.EntriesOf(r.typ, r.id) {
		if e.Param != "target" {
			continue
		}
		if ref, ok := search.ReferenceFromKey(e.Key); ok {
			out = append(out, ref)
		}
	}
	return out
}

// allOwned reports whether there is at least one reference and each names
// a resource of the member's record.
func (w *view) allOwned(refs []string, depth int) bool {
	for _, ref := range refs {
		if !w.refOwned(ref, depth) {
			return false
		}
	}
	return len(refs) > 0
}

// local splits a reference to a resource on this server into its type and
// id ("Patient/1", "Patient/1/_history/2", or either under the base URL).
func (w *view) local(ref string) (typ, id string, ok bool) {
	ref = search.NormalizeReference(ref, w.pol.base)
	typ, id, ok = strings.Cut(ref, "/")
	if !ok || strings.Contains(id, "/") || id == "" || !spec.R4().IsResource(typ) {
		return "", "", false
	}
	return typ, id, true
}

// refOwned reports whether ref names a resource of the member's record: one
// of their Patients, reference data, or a stored resource that is theirs.
func (w *view) refOwned(ref string, depth int) bool {
	typ, id, ok := w.local(ref)
	switch {
	case !ok:
		return false
	case typ == "Patient":
		return slices.Contains(w.pats, id)
	case !patientBound(typ):
		return true
	case depth <= 0:
		return false
	}
	key := typ + "/" + id
	if seen, ok := w.memo[key]; ok {
		return seen
	}
	if RuleOf(typ) == Compartment {
		// The index answers for a current resource, without reading it.
		if _, deleted, ok := w.tx.CurrentVersion(typ, id); ok && !deleted {
			owned := w.pol.reg.InRecord(typ, id, w.tx.EntriesOf(typ, id), w.pats[0], w.pats[1:])
			w.memo[key] = owned
			return owned
		}
	}
	w.memo[key] = false // a reference cycle is not ownership
	v, _ := w.tx.Read(typ, id)
	owned := v != nil && w.owned(v, depth-1)
	w.memo[key] = owned
	return owned
}

// foreignRef returns the first reference in raw (a resource of typ) that
// takes it outside the member's record: a Patient not theirs (or not on this
// server), or a patient-bound resource they may not see. "" when there is
// none.
func (w *view) foreignRef(typ string, raw []byte, pending func(string) bool) string {
	var doc map[string]any
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	if d.Decode(&doc) != nil {
		return ""
	}
	if typ == "Patient" {
		delete(doc, "link") // the MDM's, kept as it is (linksKept)
	}
	// A resource whose type's rule reads it through what it refers to is
	// seen by whoever sees those: they must be the member's alone.
	readThrough := false
	switch RuleOf(typ) {
	case ProvenanceRule, SecurityContext, BundleSubject, DevicePatient, References:
		readThrough = true
	}
	var refs []string
	walkReferences(doc, func(ref string) { refs = append(refs, ref) })
	slices.Sort(refs) // the same answer every time, whatever the map order
	for _, ref := range refs {
		if ref == "" || strings.HasPrefix(ref, "#") || (pending != nil && pending(ref)) {
			continue
		}
		typ, id, ok := w.local(ref)
		if !ok {
			if strings.Contains(ref, "Patient/") {
				return ref // a Patient elsewhere is not the member
			}
			continue
		}
		if pending != nil && pending(typ+"/"+id) {
			continue
		}
		if patientBound(typ) && (!w.refOwned(ref, maxDepth) || (readThrough && w.elsewhere(ref, maxDepth))) {
			return ref
		}
	}
	return ""
}

// elsewhere reports whether the resource ref names may be in the record
// of a Patient other than the member: a Patient not theirs, a resource
// whose compartment parameters name another Patient (a Group of several,
// a Coverage whose subscriber is someone else), or one whose rule reads
// it through references (Provenance, Binary, Bundle, Device, the
// References types) to such a resource, to depth. A resource the member
// writes whose rule reads it through one (a Provenance targeting the
// Group they share, a Binary whose securityContext it is) would be read
// by that other member as theirs.
func (w *view) elsewhere(ref string, depth int) bool {
	typ, id, ok := w.local(ref)
	switch {
	case !ok:
		return strings.Contains(ref, "Patient/")
	case typ == "Patient":
		return id != w.p.Patient
	case !patientBound(typ):
		return false
	case depth <= 0:
		return true
	}
	v, _ := w.tx.Read(typ, id)
	if v = w.live(v); v == nil {
		return true
	}
	r := &resource{typ: v.Type, id: v.ID, json: v.JSON}
	if vid, deleted, ok := w.tx.CurrentVersion(typ, id); ok && !deleted && vid == v.VersionID {
		r.entries = w.tx.EntriesOf(typ, id)
	} else {
		r.entries = w.pol.reg.Extract(typ, r.decoded())
	}
	own := "Patient/" + w.p.Patient
	for _, param := range w.pol.reg.CompartmentParams(typ) {
		for _, e := range r.entries {
			if target, isRef := search.ReferenceFromKey(e.Key); isRef && e.Param == param.Code &&
				strings.HasPrefix(target, "Patient/") && target != own {
				return true
			}
		}
	}
	switch RuleOf(typ) {
	case Compartment, SubscriptionCriteria:
		return false
	}
	shared := false
	walkReferences(r.decoded(), func(to string) {
		if !shared && !strings.HasPrefix(to, "#") {
			shared = w.elsewhere(to, depth-1)
		}
	})
	return shared
}

// bundleOwned applies the Bundle rule: a document by its Composition's
// subject, a message by its MessageHeader's focus.
func (w *view) bundleOwned(b map[string]any, depth int) bool {
	entries, _ := b["entry"].([]any)
	if len(entries) == 0 {
		return false
	}
	first, _ := entries[0].(map[string]any)
	res, _ := first["resource"].(map[string]any)
	var subjects []string
	switch b["type"] {
	case "document":
		if res["resourceType"] == "Composition" {
			subjects = refsAt(res, "subject")
		}
	case "message":
		if res["resourceType"] == "MessageHeader" {
			subjects = refsAt(res, "focus")
		}
	}
	if len(subjects) == 0 {
		return false
	}
	for _, s := range subjects {
		if !w.bundleRefOwned(entries, s, depth, 2) {
			return false
		}
	}
	return true
}

// bundleRefOwned resolves ref among the Bundle's entries (by fullUrl, or
// by type and id) before the store: a Patient entry must be one of the
// member's; another entry must refer to Patients, all the member's.
func (w *view) bundleRefOwned(entries []any, ref string, depth, inner int) bool {
	res := inBundle(entries, ref, w.pol.base)
	if res == nil {
		return w.refOwned(ref, depth)
	}
	if res["resourceType"] == "Patient" {
		id, _ := res["id"].(string)
		return slices.Contains(w.pats, id)
	}
	if inner <= 0 {
		return false
	}
	n, ok := 0, true
	walkReferences(res, func(r string) {
		if !ok {
			return
		}
		target := inBundle(entries, r, w.pol.base)
		typ, _, local := w.local(r)
		if (target != nil && target["resourceType"] == "Patient") || (target == nil && local && typ == "Patient") {
			n++
			ok = w.bundleRefOwned(entries, r, depth, inner-1)
		}
	})
	return ok && n > 0
}

func inBundle(entries []any, ref, base string) map[string]any {
	norm := search.NormalizeReference(ref, base)
	for _, e := range entries {
		em, _ := e.(map[string]any)
		res, _ := em["resource"].(map[string]any)
		if res == nil {
			continue
		}
		if full, _ := em["fullUrl"].(string); full != "" && (full == ref || search.NormalizeReference(full, base) == norm) {
			return res
		}
		if rt, _ := res["resourceType"].(string); rt != "" {
			if id, _ := res["id"].(string); id != "" && rt+"/"+id == norm {
				return res
			}
		}
	}
	return nil
}

// criteriaConfined applies the Subscription rule: some occurrence of a
// parameter of the criteria's type that names Patients (a compartment
// parameter, or a reference parameter to Patients only, such as patient;
// _id for Patient) names only the member's Patients.
func (w *view) criteriaConfined(sub map[string]any) bool {
	criteria, _ := sub["criteria"].(string)
	typ, query, ok := strings.Cut(criteria, "?")
	if !ok || !spec.R4().IsResource(typ) {
		return false
	}
	values, err := url.ParseQuery(query)
	if err != nil {
		return false
	}
	compartment := spec.PatientCompartmentParams(typ)
	for key, occurrences := range values {
		code, mod, _ := strings.Cut(key, ":")
		if mod != "" && mod != "Patient" {
			continue
		}
		onlyPatients := typ == "Patient" && code == "_id"
		if p, ok := w.pol.reg.Lookup(typ, code); ok && p.Type == "reference" {
			onlyPatients = onlyPatients || slices.Equal(p.Targets, []string{"Patient"})
			if !onlyPatients && !slices.Contains(compartment, code) {
				continue
			}
		} else if !onlyPatients {
			continue
		}
		for _, occ := range occurrences {
			all := occ != ""
			for _, v := range strings.Split(occ, ",") {
				v = search.NormalizeReference(strings.TrimSpace(v), w.pol.base)
				if pid, isRef := strings.CutPrefix(v, "Patient/"); isRef {
					v = pid
				} else if strings.Contains(v, "/") || (!onlyPatients && mod == "") {
					all = false // another type, or an id that may not be a Patient's
					break
				}
				all = all && slices.Contains(w.pats, v)
			}
			if all {
				return true
			}
		}
	}
	return false
}

// refsAt returns the references held directly by element name of m (a
// Reference or a list of them).
func refsAt(m map[string]any, name string) []string {
	var out []string
	add := func(v any) {
		if r, _ := v.(map[string]any); r != nil {
			if s, _ := r["reference"].(string); s != "" {
				out = append(out, s)
			}
		}
	}
	switch v := m[name].(type) {
	case []any:
		for _, x := range v {
			add(x)
		}
	default:
		add(v)
	}
	return out
}

// walkReferences calls fn with every Reference.reference in v, contained
// resources included.
func walkReferences(v any, fn func(string)) {
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			if s, ok := c.(string); ok && k == "reference" {
				fn(s)
				continue
			}
			walkReferences(c, fn)
		}
	case []any:
		for _, c := range x {
			walkReferences(c, fn)
		}
	}
}

// ReadsWritten reports whether MayWrite reads the decoded form (Doc.Map)
// of a resource of type typ that p writes: a member's write (its
// compartment), or a Patient's (its links). When it does not, the resource
// may wait for the writer without it (store.Store.ShedMap).
func (pol *Policy) ReadsWritten(p *Principal, typ string) bool {
	return p != nil && (p.Member() || typ == "Patient")
}

// linksKept refuses a change of Patient.link, and the deletion of a
// Patient that has links.
func linksKept(before *store.Version, after *store.Doc) error {
	var was any
	if before != nil && !before.Deleted && before.Type == "Patient" {
		was = patientLinks(before.JSON)
	}
	if after == nil {
		if was != nil {
			return errs.E("authz.links", errs.Permission, fmt.Sprintf(
				"Patient/%s is linked to other Patients by this server's MDM; only an admin may delete it", before.ID))
		}
		return nil
	}
	if after.Type != "Patient" {
		return nil
	}
	var now any
	if l, ok := after.Map["link"]; ok && l != nil {
		raw, _ := json.Marshal(l)
		now = decodeJSON(raw)
	}
	if now == nil && was == nil {
		return nil
	}
	if now != nil && was != nil && reflect.DeepEqual(now, was) {
		return nil
	}
	return errs.E("authz.links", errs.Permission, fmt.Sprintf(
		"Patient.link of Patient/%s may only be changed by this server's MDM (batch ingestion) or an admin; send the links as they are", after.ID))
}

// patientLinks returns the decoded Patient.link of a stored Patient, nil
// when it has none.
func patientLinks(raw []byte) any {
	var p struct {
		Link json.RawMessage `json:"link"`
	}
	if json.Unmarshal(raw, &p) != nil || len(p.Link) == 0 || string(p.Link) == "null" {
		return nil
	}
	return decodeJSON(p.Link)
}

func decodeJSON(raw []byte) any {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if d.Decode(&v) != nil {
		return nil
	}
	return v
}
