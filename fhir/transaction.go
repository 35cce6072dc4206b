package fhir

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

type wireBundle struct {
	ResourceType string `json:"resourceType"`
	Type         string `json:"type"`
	// Entry is read one entry at a time: in a batch, an entry that cannot
	// be read is that entry's failure only.
	Entry []json.RawMessage `json:"entry"`
}

// wireEntries is a Bundle read with its entries in one pass, when every
// entry can be (see parseEntries).
type wireEntries struct {
	Entry []wireEntry `json:"entry"`
}

type wireEntry struct {
	FullURL  string          `json:"fullUrl"`
	Resource json.RawMessage `json:"resource"`
	Request  *EntryRequest   `json:"request"`
}

// txEntry is one entry of a transaction or batch being processed.
type txEntry struct {
	index   int
	fullURL string
	method  string
	typ     string
	id      string
	vid     string
	query   url.Values
	cond    bool
	ifMatch string
	ifNone  string
	raw     []byte
	// m is the resource as decoded with the Bundle (nil: decode raw), for
	// a transaction's preparation to take.
	m map[string]any
	// body is the resource's id and type, read with the whole Bundle
	// (nil: read from raw when needed).
	body *bodyInfo
	res  *response
	// valid: the entry's resource passed the Bundle's structural
	// validation (checkBundle), so it is not validated again.
	valid bool
}

// bundle serves POST [base] with a transaction or batch Bundle.
func (s *Server) bundle(w http.ResponseWriter, r *http.Request) {
	if err := checkContentType(r); err != nil {
		WriteError(w, r, err)
		return
	}
	body, err := readBody(w, r, s.cfg.MaxBody)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	m, err := decodeJSON(body)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	if rt, _ := m["resourceType"].(string); rt != "Bundle" {
		WriteError(w, r, errs.E("fhir.bundle", errs.Invalid, "POST to the base takes a Bundle of type transaction or batch"))
		return
	}
	list, _ := m["entry"].([]any)
	if len(list) > s.cfg.MaxBundleEntries {
		WriteError(w, r, errs.E("fhir.bundle", errs.TooLarge, fmt.Sprintf(
			"the Bundle has %d entries; this server processes at most %d per transaction or batch (-max-bundle-entries): split it", len(list), s.cfg.MaxBundleEntries)))
		return
	}
	if len(list) >= s.cfg.LargeBundleEntries {
		release, err := s.Expensive(r, fmt.Sprintf("a Bundle of %d entries", len(list)))
		if err != nil {
			WriteError(w, r, err)
			return
		}
		defer release()
	}
	typ, _ := m["type"].(string)
	isBatch := typ == "batch"
	invalid, err := s.checkBundle(m, isBatch)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	entries, err := s.parseEntries(body, invalid, isBatch)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	// The resources' ids and types, from the Bundle decoded above rather
	// than from each resource's text again.
	infos := make([]bodyInfo, len(list))
	for i, e := range entries {
		if e == nil || i >= len(list) {
			continue
		}
		em, _ := list[i].(map[string]any)
		rm, ok := em["resource"].(map[string]any)
		if !ok {
			continue
		}
		infos[i].ResourceType, _ = rm["resourceType"].(string)
		infos[i].ID, _ = rm["id"].(string)
		e.body = &infos[i]
		if typ == "transaction" {
			e.m = rm
		}
	}
	ret, _ := prefer(r)
	switch typ {
	case "transaction":
		err = s.transaction(r, entries)
	case "batch":
		s.batch(r, entries)
	default:
		err = errs.E("fhir.bundle", errs.Invalid, fmt.Sprintf("a Bundle of type %q cannot be processed; use transaction or batch", typ))
	}
	if err != nil {
		WriteError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.responseBundle(typ+"-response", entries, ret == "representation"))
}

// entryPath finds the entry a validation issue is about:
// Bundle.entry[3].resource.birthDate is entry 3's.
var entryPath = regexp.MustCompile(`^Bundle\.entry\[(\d+)\]`)

// checkBundle validates a transaction or batch Bundle structurally, against
// the R4 JSON schema, entries' resources included. Problems outside the
// entries fail the whole Bundle. Problems of an entry fail the whole Bundle
// too in a transaction (all or nothing, FHIR R4 http.html#trules), but in a
// batch only that entry (each entry is processed on its own, and the batch
// answers 200 whatever its entries' outcomes, http.html#brules): they are
// returned by entry index, as that entry's 400 outcome.
//
// At most maxIssues problems are listed. A batch with more is refused
// whole: past the cut, which entries are valid is not known.
func (s *Server) checkBundle(m map[string]any, batch bool) (map[int]error, error) {
	issues, more := s.model.ValidateN(m, maxIssues)
	if len(issues) == 0 {
		return nil, nil
	}
	if more > 0 {
		return nil, errs.E("fhir.parse", errs.Invalid, fmt.Sprintf("the Bundle is not valid FHIR R4 (%d problems)", len(issues)+more), structureIssues(issues, more))
	}
	var whole []errs.Issue
	byEntry := map[int][]errs.Issue{}
	for _, is := range issues {
		i := errs.Issue{Code: "structure", Path: is.Path, Message: is.Message}
		if g := entryPath.FindStringSubmatch(is.Path); g != nil && batch {
			n, _ := strconv.Atoi(g[1])
			byEntry[n] = append(byEntry[n], i)
			continue
		}
		whole = append(whole, i)
	}
	if len(whole) > 0 {
		return nil, errs.E("fhir.parse", errs.Invalid, fmt.Sprintf("the Bundle is not valid FHIR R4 (%d problems)", len(whole)), whole)
	}
	out := make(map[int]error, len(byEntry))
	for n, list := range byEntry {
		out[n] = errs.E("fhir.parse", errs.Invalid, fmt.Sprintf("entry %d is not valid FHIR R4 (%d problems); the other entries were processed", n, len(list)), list)
	}
	return out, nil
}

// parseEntries reads the entries' requests. In a batch an entry that is
// invalid (listed in invalid, or with a request this server cannot
// process) is given its failure as its response, and the others go on; in
// a transaction it fails the whole Bundle.
//
// The entries are read in one pass over body; when one cannot be read
// as an entry (a batch's invalid entry), they are read one at a time, so
// that it fails alone.
func (s *Server) parseEntries(body []byte, invalid map[int]error, batch bool) ([]*txEntry, error) {
	var all wireEntries
	if err := json.Unmarshal(body, &all); err == nil {
		out := make([]*txEntry, len(all.Entry))
		for i := range all.Entry {
			te, err := s.entryOf(i, &all.Entry[i], invalid[i])
			if err != nil {
				if !batch {
					msg, issues := errs.Public(err)
					return nil, errs.E("fhir.transaction", errs.KindOf(err), msg+"; nothing was written", issues, err)
				}
				status, oo := Outcome(err)
				te = &txEntry{index: i, fullURL: all.Entry[i].FullURL, res: &response{Status: status, Outcome: oo}}
			}
			out[i] = te
		}
		return out, nil
	}
	var wb wireBundle
	if err := json.Unmarshal(body, &wb); err != nil {
		return nil, errs.E("fhir.bundle", errs.Invalid, "the Bundle could not be read", err)
	}
	out := make([]*txEntry, len(wb.Entry))
	for i, rawEntry := range wb.Entry {
		te, err := s.parseEntry(i, rawEntry, invalid[i])
		if err != nil {
			if !batch {
				msg, issues := errs.Public(err)
				return nil, errs.E("fhir.transaction", errs.KindOf(err), msg+"; nothing was written", issues, err)
			}
			status, oo := Outcome(err)
			// Its fullUrl is kept, so that an entry referring to it
			// is refused too (see batch).
			var fu struct {
				FullURL string `json:"fullUrl"`
			}
			_ = json.Unmarshal(rawEntry, &fu)
			te = &txEntry{index: i, fullURL: fu.FullURL, res: &response{Status: status, Outcome: oo}}
		}
		out[i] = te
	}
	return out, nil
}

func (s *Server) parseEntry(i int, rawEntry json.RawMessage, invalid error) (*txEntry, error) {
	if invalid != nil {
		return nil, invalid
	}
	fail := func(format string, args ...any) error {
		return errs.E("fhir.bundle", errs.Invalid, fmt.Sprintf("entry %d: ", i)+fmt.Sprintf(format, args...))
	}
	var e wireEntry
	if err := json.Unmarshal(rawEntry, &e); err != nil {
		return nil, fail("the entry could not be read")
	}
	return s.entryOf(i, &e, nil)
}

// entryOf reads entry i's request (invalid: the entry's resource failed
// validation).
func (s *Server) entryOf(i int, e *wireEntry, invalid error) (*txEntry, error) {
	if invalid != nil {
		return nil, invalid
	}
	fail := func(format string, args ...any) error {
		return errs.E("fhir.bundle", errs.Invalid, fmt.Sprintf("entry %d: ", i)+fmt.Sprintf(format, args...))
	}
	if e.Request == nil || e.Request.Method == "" || e.Request.URL == "" {
		return nil, fail("request.method and request.url are required")
	}
	te := &txEntry{index: i, fullURL: e.FullURL, method: strings.ToUpper(e.Request.Method),
		ifMatch: e.Request.IfMatch, ifNone: e.Request.IfNoneExist, raw: e.Resource}
	u := strings.TrimPrefix(e.Request.URL, s.cfg.BaseURL+"/")
	path, rawQuery, hasQuery := strings.Cut(u, "?")
	parts := strings.Split(strings.Trim(path, "/"), "/")
	te.typ = parts[0]
	if !s.model.IsResource(te.typ) {
		return nil, fail("%q does not name a resource type", e.Request.URL)
	}
	switch {
	case len(parts) == 2:
		te.id = parts[1]
	case len(parts) == 4 && parts[2] == "_history":
		te.id, te.vid = parts[1], parts[3]
	case len(parts) != 1:
		return nil, fail("%q is not a URL this server can process in a Bundle", e.Request.URL)
	}
	if hasQuery {
		q, err := url.ParseQuery(rawQuery)
		if err != nil {
			return nil, fail("the query of %q cannot be parsed", e.Request.URL)
		}
		te.query = q
	}
	if te.vid != "" && te.method != http.MethodGet && te.method != http.MethodHead {
		// A version is only read (vread); PUT or DELETE of
		// Type/id/_history/vid is no R4 interaction, and acting on the
		// current version instead would do what was not asked.
		return nil, fail("%s of a version URL (%q) is not an R4 interaction; only GET and HEAD may name a version", te.method, e.Request.URL)
	}
	if strings.Contains(e.FullURL, "/_history/") {
		return nil, fail("fullUrl %q is version-specific; a fullUrl cannot be a version specific reference (Bundle invariant bdl-8)", e.FullURL)
	}
	switch te.method {
	case http.MethodGet, http.MethodHead:
	case http.MethodPost:
		if te.id != "" || len(e.Resource) == 0 {
			return nil, fail("POST takes a resource and a type URL")
		}
	case http.MethodPut:
		if len(e.Resource) == 0 || (te.id == "" && !hasQuery) {
			return nil, fail("PUT takes a resource and a Type/id or conditional URL")
		}
		te.cond = te.id == ""
	case http.MethodDelete:
		if te.id == "" && !hasQuery {
			return nil, fail("DELETE takes a Type/id or conditional URL")
		}
		te.cond = te.id == ""
	default:
		return nil, fail("method %s is not supported in a Bundle", te.method)
	}
	te.valid = true
	return te, nil
}

// processing order of a transaction (FHIR R4 http.html#trules): DELETE,
// POST, PUT/PATCH, then GET/HEAD.
var methodOrder = map[string]int{http.MethodDelete: 0, http.MethodPost: 1, http.MethodPut: 2, http.MethodGet: 3, http.MethodHead: 3}

// transaction processes all entries in one store transaction: all or
// nothing, by the rules of FHIR R4 http.html#trules (see txrules.go).
//
// The single store writer is held only for the writes themselves: the
// transaction is prepared first on a read snapshot (identities decided,
// links rewritten, conditional references resolved, each resource decoded
// and its index entries computed, see prepareTransaction). The writer then
// checks that every read the preparation made answers the same (only when
// something was written since the snapshot), preparing again inside if one
// does not, and writes. A client that goes away stops the transaction
// before its next entry, and nothing is written.
func (s *Server) transaction(r *http.Request, entries []*txEntry) error {
	ctx := r.Context()
	if err := checkFullURLs(entries); err != nil {
		return err
	}
	newIDs := make([]string, len(entries))
	bodies := make([]bodyInfo, len(entries))
	for i, e := range entries {
		newIDs[i] = NewID()
		if len(e.raw) > 0 {
			if e.body != nil {
				bodies[i] = *e.body
			} else {
				bodies[i] = decodeBody(e.raw)
			}
			if bodies[i].ResourceType != e.typ {
				return entryErr(e, errs.E("fhir.transaction", errs.Invalid, fmt.Sprintf("the resource is a %s but request.url is for %s", bodies[i].ResourceType, e.typ)))
			}
		}
	}
	ordered := append([]*txEntry(nil), entries...)
	sort.SliceStable(ordered, func(a, b int) bool { return methodOrder[ordered[a].method] < methodOrder[ordered[b].method] })
	var prep *txPrepared
	if err := s.store.View(ctx, func(tx *store.Tx) error {
		var err error
		prep, err = s.prepareTransaction(tx, entries, bodies, newIDs)
		return err
	}); err != nil {
		return err
	}
	write := s.store.Write
	if len(entries) >= s.cfg.LargeBundleEntries {
		// Committed on its own: the writes queued before it do not wait
		// for it.
		write = s.store.WriteAlone
	}
	return write(ctx, func(tx *store.Tx) error {
		for _, e := range entries {
			e.res = nil
		}
		if !prep.holds(tx) {
			// A write since the snapshot changed what the preparation
			// read: prepare again, on the writer's state.
			var err error
			if prep, err = s.prepareTransaction(tx, entries, bodies, newIDs); err != nil {
				return err
			}
		}
		plan, docs := prep.plan, prep.docs
		// References between entries are checked when their targets are
		// written (by the policy), not before they exist.
		// Only what an entry creates or updates: a DELETE writes nothing
		// to check, and one of a resource the requester may not see
		// answers as one of nothing, so its id must not count as written.
		pending := map[string]bool{}
		for i, t := range plan.targets {
			if m := entries[i].method; t.skip == nil && t.ref != "" && (m == http.MethodPost || m == http.MethodPut) {
				pending[t.ref] = true
			}
		}
		// 5. Process in FHIR's order.
		for _, e := range ordered {
			if err := ctx.Err(); err != nil {
				return errs.E("fhir.transaction", errs.Transient, "the client went away; nothing was written", err)
			}
			t := plan.targets[e.index]
			if t.skip != nil {
				e.res = t.skip
				continue
			}
			_, id, _ := strings.Cut(t.ref, "/")
			rq := &request{Method: e.method, Type: e.typ, ID: e.id, VID: e.vid, Query: e.query, IfMatch: e.ifMatch,
				pending: func(ref string) bool { return pending[ref] }}
			switch e.method {
			case http.MethodGet, http.MethodHead:
				rq.Method, rq.Query = http.MethodGet, plan.queryLinks(e.query)
			case http.MethodDelete:
				if t.cond && id == "" {
					// Nothing to delete, but authorized as the same REST call.
					if err := s.policy.Need(AccessFrom(tx.Context()), e.typ, authz.Delete); err != nil {
						return entryErr(e, err)
					}
					e.res = &response{Status: http.StatusOK, Outcome: Info("no resource matched the condition; nothing was deleted")}
					continue
				}
				rq.ID = id
			case http.MethodPost, http.MethodPut:
				doc := docs[e.index]
				if e.method == http.MethodPut && bodies[e.index].ID != "" && bodies[e.index].ID != id {
					what := "the id in request.url"
					if t.cond {
						what = "the id the condition matched"
					}
					return entryErr(e, errs.E("fhir.transaction", errs.Invalid,
						fmt.Sprintf("the resource id %q differs from %s (%q)", bodies[e.index].ID, what, id)))
				}
				rq.ID, rq.Doc = id, doc
				// A conditional update that matched nothing creates with
				// the id the server chose: a create, not an update-as-create.
				rq.assigned = e.method == http.MethodPut && t.cond && id == newIDs[e.index]
			}
			res, err := s.apply(tx, rq)
			if err != nil {
				return entryErr(e, err)
			}
			if e.method == http.MethodHead && res != nil {
				head := *res
				head.Body = nil
				res = &head
			}
			e.res = res
		}
		return nil
	})
}

// txPrepared is a transaction made ready to write: its plan, and the
// resources to write with their references rewritten and index entries
// computed.
type txPrepared struct {
	plan *txPlan
	docs []*store.Doc
	seq  uint64 // the store's change sequence when prepared
}

// holds reports whether the preparation is still right in tx: nothing was
// written since, or every read it made answers the same.
func (p *txPrepared) holds(tx *store.Tx) bool {
	if tx.ChangeSeq() == p.seq {
		return true
	}
	for _, check := range p.plan.reads {
		if !check(tx) {
			return false
		}
	}
	return true
}

// prepareTransaction decides every entry's identity, rewrites links,
// resolves conditional references and prepares each resource to write,
// reading through tx.
func (s *Server) prepareTransaction(tx *store.Tx, entries []*txEntry, bodies []bodyInfo, newIDs []string) (*txPrepared, error) {
	ctx := tx.Context()
	// Every version the transaction writes has one lastUpdated.
	at := time.Now()
	// 1. Every entry's identity, against the state before the transaction.
	plan, err := s.planTransaction(tx, entries, bodies, newIDs)
	if err != nil {
		return nil, err
	}
	// 2. fullUrl links rewritten to the locations decided in 1, and the
	// index entries and stored form of each resource without conditional
	// references computed: each entry on its own, spread over the cores.
	docs := make([]*store.Doc, len(entries))
	conds := make([][]string, len(entries))
	failed := make([]error, len(entries))
	err = forEachParallel(ctx, len(entries), func(i int) {
		e := entries[i]
		t := plan.targets[e.index]
		if (e.method != http.MethodPost && e.method != http.MethodPut) || t.skip != nil {
			return
		}
		raw, changes := rewriteLinksRecorded(s.model, e.raw, e.typ, func(kind linkKind, v string) (string, bool) {
			if kind == linkReference {
				if _, _, ok := s.conditionalRef(v); ok {
					conds[i] = append(conds[i], v)
					return "", false
				}
			}
			return s.link(plan, e, kind, v)
		})
		// The resource as decoded with the Bundle, its links replaced as
		// in raw; taken once, as it is changed (a second preparation
		// decodes raw). The whole Bundle was validated before; rewriting
		// links replaced strings with strings, so decoding is enough.
		m := e.m
		e.m = nil
		if m != nil {
			rewriteDecodedLinks(s.model, m, e.typ, changes.lookup)
		} else {
			var err error
			if m, err = decodeJSON(raw); err != nil {
				failed[i] = entryErr(e, err)
				return
			}
		}
		_, id, _ := strings.Cut(t.ref, "/")
		d := &store.Doc{Type: e.typ, ID: id, Map: m, JSON: raw}
		if len(conds[i]) == 0 && id != "" {
			s.store.PrepareAt(d, at)
		}
		docs[i] = d
	})
	if err != nil {
		return nil, err
	}
	var writes []*txWrite
	for i, d := range docs {
		if failed[i] != nil {
			return nil, failed[i]
		}
		if d != nil {
			// Prepared, its index entries serve conditional references.
			writes = append(writes, &txWrite{typ: d.Type, id: d.ID, m: d.Map, entries: d.Entries})
		}
	}
	// 3. Conditional references, against the state after the writes.
	resolved := map[string]string{}
	for i, e := range entries {
		refs := conds[i]
		if len(refs) == 0 {
			continue
		}
		for _, ref := range refs {
			if _, ok := resolved[ref]; ok {
				continue
			}
			to, err := s.resolveConditionalRef(tx, ref, plan, writes)
			if err != nil {
				return nil, entryErr(e, err)
			}
			resolved[ref] = to
		}
		d := docs[e.index]
		resolve := func(kind linkKind, v string) (string, bool) {
			to, ok := resolved[v]
			return to, ok && kind == linkReference
		}
		d.JSON, _ = rewriteLinks(s.model, d.JSON, e.typ, resolve)
		rewriteDecodedLinks(s.model, d.Map, e.typ, resolve)
		// 4. Its index entries and stored form, outside the writer.
		if d.ID != "" {
			s.store.PrepareAt(d, at)
		}
	}
	// 5. What waits for the writer kept small: the decoded form of each
	// resource is dropped where nothing in the writer reads it (no
	// validator of its type, no access rule), and with it the index of
	// the resources written that conditional references were matched in.
	plan.mem = nil
	a := AccessFrom(ctx)
	for _, d := range docs {
		if d != nil && d.ID != "" && len(s.validatorsFor(d.Type)) == 0 && !s.policy.ReadsWritten(a, d.Type) {
			s.store.ShedMap(d)
		}
	}
	return &txPrepared{plan: plan, docs: docs, seq: tx.ChangeSeq()}, nil
}

// forEachParallel calls fn(i) for every i below n, on as many goroutines
// as there are cores (GOMAXPROCS), and returns ctx's error if ctx ends
// before all are called. fn must be safe to call concurrently for
// different i.
func forEachParallel(ctx context.Context, n int, fn func(i int)) error {
	workers := min(runtime.GOMAXPROCS(0), n)
	if workers <= 1 {
		for i := range n {
			if err := ctx.Err(); err != nil {
				return err
			}
			fn(i)
		}
		return nil
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				fn(i)
			}
		}()
	}
	wg.Wait()
	return ctx.Err()
}

func entryErr(e *txEntry, err error) error {
	msg, issues := errs.Public(err)
	return errs.E("fhir.transaction", errs.KindOf(err), fmt.Sprintf("entry %d (%s %s): %s; nothing was written", e.index, e.method, e.typ, msg), issues, err)
}

// batch processes each entry on its own; a failure is that entry's
// response and does not affect the others.
//
// The entries of a batch are independent (FHIR R4 http.html, "Batch
// Processing Rules": "there SHALL be no interdependencies between the
// different entries in the Bundle that cause change on the server …
// Servers SHOULD validate that this is the case"): an entry whose resource
// refers to the fullUrl of another entry fails with 400, since that
// reference would be stored as it is, pointing at nothing (only a
// transaction replaces fullUrls with the ids it writes).
func (s *Server) batch(r *http.Request, entries []*txEntry) {
	fullURLs := make(map[string]int, len(entries))
	for _, e := range entries {
		if e.fullURL != "" {
			fullURLs[e.fullURL] = e.index
		}
	}
	for _, e := range entries {
		if e.res != nil {
			continue // refused when read (parseEntries)
		}
		rq := &request{Method: e.method, Type: e.typ, ID: e.id, VID: e.vid, Query: e.query, Conditional: e.cond, IfMatch: e.ifMatch, IfNoneExist: e.ifNone}
		var err error
		if e.method == http.MethodPost || e.method == http.MethodPut {
			var doc *store.Doc
			doc, err = s.entryResource(e)
			if err == nil {
				err = s.refuseConditionalRefs(doc.JSON, doc.Type)
			}
			if err == nil {
				err = batchIndependent(doc, e, fullURLs)
			}
			if err == nil {
				if e.method == http.MethodPost {
					doc.ID = NewID()
				}
				if e.method == http.MethodPost || doc.ID == e.id && doc.ID != "" {
					s.store.Prepare(doc) // index entries outside the writer
				}
				rq.Doc = doc
			}
		}
		if err == nil {
			fn := func(tx *store.Tx) error {
				res, err := s.apply(tx, rq)
				e.res = res
				return err
			}
			if e.method == http.MethodGet {
				err = s.store.View(r.Context(), fn)
			} else {
				err = s.store.Write(r.Context(), fn)
			}
		}
		if err != nil {
			status, oo := Outcome(err)
			e.res = &response{Status: status, Outcome: oo}
		}
	}
}

// batchIndependent refuses a batch entry whose resource refers to the
// fullUrl of another entry of the batch (see batch).
func batchIndependent(doc *store.Doc, e *txEntry, fullURLs map[string]int) error {
	if len(fullURLs) == 0 {
		return nil
	}
	var issues []errs.Issue
	walkReferences(doc.Map, func(ref string) {
		target, _, _ := strings.Cut(ref, "#")
		j, ok := fullURLs[target]
		if !ok {
			// A version of another entry's fullUrl (…/_history/n)
			// depends on that entry as much.
			if base, _, versioned := strings.Cut(target, "/_history/"); versioned {
				j, ok = fullURLs[base]
			}
		}
		if ok && j != e.index && len(issues) < 10 {
			issues = append(issues, errs.Issue{Code: "business-rule", Path: fmt.Sprintf("Bundle.entry[%d].resource", e.index),
				Message: fmt.Sprintf("the reference %q is the fullUrl of entry %d: the entries of a batch are independent and their references are not resolved to each other (FHIR R4 http.html, batch processing rules); send these entries in a transaction", clipRef(ref), j)})
		}
	})
	if len(issues) > 0 {
		return errs.E("fhir.batch", errs.Invalid, fmt.Sprintf("entry %d refers to another entry of the batch", e.index), issues)
	}
	return nil
}

func clipRef(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

// entryResource decodes a batch entry's resource, validated already with
// the Bundle.
func (s *Server) entryResource(e *txEntry) (*store.Doc, error) {
	if !e.valid {
		return s.parseResource(e.raw, e.typ)
	}
	m, err := decodeJSON(e.raw)
	if err != nil {
		return nil, err
	}
	return s.docOf(m, e.raw, e.typ)
}

func (s *Server) responseBundle(typ string, entries []*txEntry, withResource bool) *Bundle {
	b := newBundle(typ)
	for _, e := range entries {
		res := e.res
		be := BundleEntry{Response: &EntryResponse{Status: fmt.Sprintf("%d %s", res.Status, http.StatusText(res.Status))}}
		if v := res.Version; v != nil && res.Body == nil {
			be.FullURL = s.fullURL(v)
			be.Response.Etag = fmt.Sprintf(`W/"%d"`, v.VersionID)
			be.Response.LastModified = v.LastUpdated.Format(time.RFC3339Nano)
			if e.method != http.MethodGet {
				be.Response.Location = fmt.Sprintf("%s/%s/_history/%d", v.Type, v.ID, v.VersionID)
			}
			if !v.Deleted && (withResource || e.method == http.MethodGet) {
				be.Resource = v.JSON
			}
		}
		if res.Body != nil {
			be.Resource = res.Body
		}
		if res.Outcome != nil {
			be.Response.Outcome, _ = json.Marshal(res.Outcome)
		}
		b.Entry = append(b.Entry, be)
	}
	return b
}

// walkReferences calls fn with the value of every "reference" member in a
// decoded resource.
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
