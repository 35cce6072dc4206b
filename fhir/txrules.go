package fhir

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// This file holds the rules of FHIR R4 http.html#trules ("Transaction
// Processing Rules") and the conditional references of the same section:
//
//   - every entry's identity is decided against the state before the
//     transaction (conditional updates, deletes and creates included), and a
//     resource identity may appear once among the DELETE, POST and PUT
//     entries, or the transaction fails with nothing written;
//   - entries are processed DELETE, then POST, then PUT, then GET/HEAD, so
//     the reads see every write and the outcome does not depend on the
//     order of the entries;
//   - the fullUrl of each created or updated entry is replaced, wherever the
//     rules name links (references, uri/url/oid/uuid elements, href and src
//     in the narrative; never canonical), by the resource's new location,
//     version-specific links keeping a version (the one the write will get);
//     relative references resolve against the root of the referring entry's
//     RESTful fullUrl as the rules for resolving references in Bundles say;
//   - conditional references ("Patient?identifier=x") are resolved as the
//     last step: against the state after the transaction's writes, so a
//     resource created in the same transaction is found. Resources the
//     transaction writes are matched in memory by their index entries;
//     chained parameters only match stored resources.

// txTarget is what one entry of a transaction acts on.
type txTarget struct {
	ref     string // Type/id; "" for reads and for conditional deletes that match nothing
	version int64  // the version the entry's write will have (or the existing one of a matched conditional create)
	skip    *response
	cond    bool // a conditional entry, resolved here
}

// txPlan is a transaction's entries resolved against one store state.
type txPlan struct {
	targets []txTarget
	byURL   map[string]int // fullUrl -> entry index, for created and updated entries
	// reads repeat each read the plan made of the store and report whether
	// it answers the same: a plan made on a snapshot still holds in the
	// writer when all do.
	reads []func(tx *store.Tx) bool
	mem   *txMemIndex // built by the first conditional reference
}

// search runs a conditional search and notes it among the plan's reads.
func (p *txPlan) search(s *Server, tx *store.Tx, typ string, cond url.Values) ([]string, error) {
	found, err := s.matchCondition(tx, typ, cond)
	if err == nil {
		p.reads = append(p.reads, func(tx *store.Tx) bool {
			again, err := s.matchCondition(tx, typ, cond)
			return err == nil && slices.Equal(again, found)
		})
	}
	return found, err
}

// current reads typ/id, deleted or not, noting its version among the
// plan's reads.
func (p *txPlan) current(tx *store.Tx, typ, id string) (*store.Version, error) {
	version := func(tx *store.Tx) (*store.Version, int64, error) {
		v, err := tx.Read(typ, id)
		if v != nil && (err == nil || errs.Is(err, errs.Gone)) {
			return v, v.VersionID, err
		}
		return v, 0, err
	}
	v, n, err := version(tx)
	p.reads = append(p.reads, func(tx *store.Tx) bool {
		// In the writer: the version number alone, the resource not
		// decoded.
		again, _, ok := tx.CurrentVersion(typ, id)
		if !ok {
			again = 0
		}
		return again == n
	})
	return v, err
}

// bodyInfo is what a transaction needs to know of an entry's resource
// before it is rewritten.
type bodyInfo struct {
	ID           string `json:"id"`
	ResourceType string `json:"resourceType"`
}

// checkFullURLs refuses a transaction in which two entries claim the same
// fullUrl: references to it would be ambiguous (Bundle invariant bdl-7).
func checkFullURLs(entries []*txEntry) error {
	seen := map[string]int{}
	for _, e := range entries {
		if e.fullURL == "" {
			continue
		}
		if j, dup := seen[e.fullURL]; dup {
			return errs.E("fhir.transaction", errs.Invalid, fmt.Sprintf(
				"entries %d and %d have the same fullUrl %q; a fullUrl must be unique in a Bundle (bdl-7); nothing was written", j, e.index, e.fullURL))
		}
		seen[e.fullURL] = e.index
	}
	return nil
}

// planTransaction decides every entry's identity against tx's state and
// checks that no identity appears twice among the writes.
func (s *Server) planTransaction(tx *store.Tx, entries []*txEntry, bodies []bodyInfo, newIDs []string) (*txPlan, error) {
	p := &txPlan{targets: make([]txTarget, len(entries)), byURL: map[string]int{}}
	owner := map[string]int{}
	// The entries whose identity a search decides come last, so that the
	// fullUrls their conditions name are known (see queryLinks).
	order := make([]*txEntry, 0, len(entries))
	for _, searched := range []bool{false, true} {
		for _, e := range entries {
			if (e.cond || (e.method == http.MethodPost && e.ifNone != "")) == searched {
				order = append(order, e)
			}
		}
	}
	for _, e := range order {
		t := &p.targets[e.index]
		var id string
		switch e.method {
		case http.MethodDelete:
			id = e.id
			if e.cond {
				t.cond = true
				found, err := p.search(s, tx, e.typ, p.queryLinks(e.query))
				if err != nil {
					return nil, entryErr(e, err)
				}
				switch len(found) {
				case 0:
				case 1:
					id = found[0]
				default:
					return nil, entryErr(e, errs.E("fhir.transaction", errs.Precondition,
						fmt.Sprintf("the condition matched %d resources; a conditional delete must match at most one", len(found))))
				}
			}
		case http.MethodPost:
			id = newIDs[e.index]
			if e.ifNone != "" {
				// Authorized as the same create over REST: c here, s for
				// the condition (matchCondition).
				if err := s.policy.Need(AccessFrom(tx.Context()), e.typ, authz.Create); err != nil {
					return nil, entryErr(e, err)
				}
				cond, err := conditionFrom(e.ifNone)
				if err != nil {
					return nil, entryErr(e, err)
				}
				found, err := p.search(s, tx, e.typ, p.queryLinks(cond))
				if err != nil {
					return nil, entryErr(e, err)
				}
				switch len(found) {
				case 0:
				case 1:
					v, err := p.current(tx, e.typ, found[0])
					if err != nil {
						return nil, entryErr(e, err)
					}
					t.skip = &response{Status: http.StatusOK, Version: v}
					t.version = v.VersionID
					id = found[0]
				default:
					return nil, entryErr(e, errs.E("fhir.transaction", errs.Precondition,
						fmt.Sprintf("ifNoneExist matched %d resources; it must match at most one", len(found))))
				}
			}
		case http.MethodPut:
			id = e.id
			if e.cond {
				t.cond = true
				found, err := p.search(s, tx, e.typ, p.queryLinks(e.query))
				if err != nil {
					return nil, entryErr(e, err)
				}
				switch len(found) {
				case 0:
					id = bodies[e.index].ID
					if id == "" {
						id = newIDs[e.index]
					} else if err := s.noUnmatchedOverwrite(tx, e.typ, id); err != nil {
						return nil, entryErr(e, err)
					}
				case 1:
					id = found[0]
				default:
					return nil, entryErr(e, errs.E("fhir.transaction", errs.Precondition,
						fmt.Sprintf("the condition matched %d resources; it must match at most one", len(found))))
				}
			}
		default: // GET, HEAD
			continue
		}
		if id == "" {
			continue
		}
		t.ref = e.typ + "/" + id
		if j, dup := owner[t.ref]; dup {
			return nil, errs.E("fhir.transaction", errs.Invalid, fmt.Sprintf(
				"entries %d (%s) and %d (%s) both act on %s; a resource may appear only once in a transaction (FHIR R4 http.html#trules); nothing was written",
				j, entries[j].method, e.index, e.method, t.ref))
		}
		owner[t.ref] = e.index
		if e.method == http.MethodDelete {
			continue
		}
		if t.skip == nil {
			t.version = 1
			// A POST's id is new, chosen by the server (its create fails
			// if it is not): there is nothing to read, or to read again
			// in the writer.
			if e.method != http.MethodPost {
				if v, err := p.current(tx, e.typ, id); v != nil && (err == nil || errs.Is(err, errs.Gone)) {
					t.version = v.VersionID + 1
				}
			}
		}
		if e.fullURL != "" {
			p.byURL[e.fullURL] = e.index
		}
	}
	return p, nil
}

// link answers what a link found in the resource of entry from becomes:
// the location of the entry whose fullUrl it names.
func (s *Server) link(p *txPlan, from *txEntry, kind linkKind, v string) (string, bool) {
	i, versioned, ok := p.lookup(v)
	if !ok && kind != linkURI {
		// A relative Type/id resolves against the root of the referring
		// entry's RESTful fullUrl (http.html#trules, "Resolving references
		// in Bundles").
		if root := s.restfulRoot(from.fullURL); root != "" && !strings.Contains(v, ":") {
			i, versioned, ok = p.lookup(root + v)
		}
	}
	if !ok {
		return "", false
	}
	t := p.targets[i]
	to := t.ref
	if versioned {
		to += fmt.Sprintf("/_history/%d", t.version)
	}
	if kind != linkReference {
		to = s.cfg.BaseURL + "/" + to
	}
	return to, to != v
}

// queryLinks returns q with every value (or comma-separated alternative)
// that is the fullUrl of an entry whose identity is decided replaced by the
// entry's Type/id: the links of a conditional URL, an ifNoneExist, a GET
// entry's search or a conditional reference are links in the bundle too
// (http.html#trules: "Servers SHALL replace all matching links in the
// bundle"). A condition naming an entry that is itself conditional sees
// the fullUrl only when that entry was decided first.
func (p *txPlan) queryLinks(q url.Values) url.Values {
	var out url.Values
	for k, vs := range q {
		for j, v := range vs {
			parts := strings.Split(v, ",")
			changed := false
			for n, part := range parts {
				i, versioned, ok := p.lookup(part)
				if !ok || p.targets[i].ref == "" {
					continue
				}
				to := p.targets[i].ref
				if versioned {
					to += fmt.Sprintf("/_history/%d", p.targets[i].version)
				}
				parts[n], changed = to, true
			}
			if !changed {
				continue
			}
			if out == nil {
				out = make(url.Values, len(q))
				for k2, vs2 := range q {
					out[k2] = slices.Clone(vs2)
				}
			}
			out[k][j] = strings.Join(parts, ",")
		}
	}
	if out == nil {
		return q
	}
	return out
}

// lookup finds the entry whose fullUrl v is, or a version of.
func (p *txPlan) lookup(v string) (int, bool, bool) {
	if i, ok := p.byURL[v]; ok {
		return i, false, true
	}
	if base, vid, ok := strings.Cut(v, "/_history/"); ok && vid != "" && !strings.Contains(vid, "/") {
		if i, ok := p.byURL[base]; ok {
			return i, true, true
		}
	}
	return 0, false, false
}

// restfulRoot returns the base of a RESTful absolute fullUrl
// ("http://x/fhir/" of "http://x/fhir/Patient/1"), or "".
func (s *Server) restfulRoot(fullURL string) string {
	if !strings.HasPrefix(fullURL, "http://") && !strings.HasPrefix(fullURL, "https://") {
		return ""
	}
	parts := strings.Split(fullURL, "/")
	n := len(parts)
	if n < 5 || !s.model.IsResource(parts[n-2]) || checkID(parts[n-1]) != nil {
		return ""
	}
	return strings.Join(parts[:n-2], "/") + "/"
}

// conditionalRef reports whether ref is a conditional reference:
// [type]?[parameters].
func (s *Server) conditionalRef(ref string) (string, string, bool) {
	typ, query, ok := strings.Cut(ref, "?")
	if !ok || !s.model.IsResource(typ) {
		return "", "", false
	}
	return typ, query, true
}

// refuseConditionalRefs refuses a resource written outside a transaction
// (a create, an update, a batch entry) that holds a conditional reference
// ("Patient?identifier=x"): conditional references are a feature of
// transactions, resolved by their rules (FHIR R4 http.html#trules); stored
// as they are they would be references to nothing.
func (s *Server) refuseConditionalRefs(raw []byte, typ string) error {
	if !bytes.ContainsRune(raw, '?') {
		return nil
	}
	var found string
	rewriteLinks(s.model, raw, typ, func(kind linkKind, v string) (string, bool) {
		if kind == linkReference && found == "" {
			if _, _, ok := s.conditionalRef(v); ok {
				found = v
			}
		}
		return "", false
	})
	if found == "" {
		return nil
	}
	return errs.E("fhir.write", errs.Invalid, fmt.Sprintf(
		"%q is a conditional reference; conditional references are resolved only in a transaction Bundle (FHIR R4 http.html#trules): send the write in one, or refer to the resource by Type/id", found))
}

// controlParams are the search parameters that shape a result rather than
// filter it; a conditional reference may not use them (http.html#trules:
// "Only filtering parameters are allowed").
var controlParams = []string{"_sort", "_count", "_include", "_revinclude", "_summary", "_elements", "_total", "_contained", "_containedType", "_format", "_pretty", "_cursor"}

// txWrite is a resource a transaction is about to write, for matching
// conditional references in memory.
type txWrite struct {
	typ, id string
	m       map[string]any
	entries []search.Entry
}

// resolveConditionalRef finds the one resource a conditional reference
// names in the state after the transaction's writes: the stored resources
// that match, less those the transaction deletes or replaces, plus the
// resources it writes whose index entries match.
func (s *Server) resolveConditionalRef(tx *store.Tx, ref string, p *txPlan, writes []*txWrite) (string, error) {
	typ, rawQuery, _ := s.conditionalRef(ref)
	cond, err := url.ParseQuery(rawQuery)
	if err != nil || len(cond) == 0 {
		return "", errs.E("fhir.transaction", errs.Invalid, fmt.Sprintf("conditional reference %q is not [type]?[search parameters]", ref))
	}
	cond = p.queryLinks(cond)
	for name := range cond {
		base, _, _ := strings.Cut(name, ":")
		if slices.Contains(controlParams, base) {
			return "", errs.E("fhir.transaction", errs.Invalid,
				fmt.Sprintf("conditional reference %q uses %s; only filtering parameters are allowed (FHIR R4 http.html#trules)", ref, base))
		}
	}
	// Resolved as the requester would search (s on the type, only what
	// they may see).
	a := AccessFrom(tx.Context())
	if err := s.policy.Need(a, typ, authz.Search); err != nil {
		return "", err
	}
	q, err := s.reg.Parse(typ, cond, search.Options{Base: s.cfg.BaseURL})
	if err != nil {
		return "", err
	}
	lookup := func(tx *store.Tx) ([]string, error) {
		s.policy.Confine(tx, a, q)
		ids, err := tx.Search(q)
		if err != nil {
			return nil, err
		}
		return s.policy.Filter(tx, a, typ, ids)
	}
	stored, err := lookup(tx)
	if err != nil {
		return "", err
	}
	p.reads = append(p.reads, func(tx *store.Tx) bool {
		again, err := lookup(tx)
		return err == nil && slices.Equal(again, stored)
	})
	mem := p.memIndex(s, writes)
	var found []string
	for _, id := range stored {
		if !mem.touched[typ+"/"+id] {
			found = append(found, typ+"/"+id)
		}
	}
	for _, w := range mem.candidates(typ, q) {
		if q.Compartment != "" && !s.reg.InRecord(w.typ, w.id, w.entries, q.Compartment, q.Linked) {
			continue // the member's write is confined as a stored resource is
		}
		ok := true
		for i := range q.Clauses {
			if !search.Matches(&q.Clauses[i], w.entries) {
				ok = false
				break
			}
		}
		if ok {
			found = append(found, typ+"/"+w.id)
		}
	}
	if len(found) != 1 {
		sort.Strings(found)
		return "", errs.E("fhir.transaction", errs.Precondition,
			fmt.Sprintf("conditional reference %q matched %d resources; it must match exactly one (FHIR R4 http.html#trules)", ref, len(found)))
	}
	return found[0], nil
}

// txMemIndex finds the resources a transaction writes by their index
// entries, so that resolving each conditional reference costs a lookup,
// not a pass over every entry.
type txMemIndex struct {
	touched map[string]bool       // Type/id the transaction writes or deletes (matched conditional creates aside)
	byType  map[string][]*txWrite // the writes of each type
	byKey   map[string][]*txWrite // Type NUL param NUL key -> the writes with that entry
}

// memIndex builds the index once per plan.
func (p *txPlan) memIndex(s *Server, writes []*txWrite) *txMemIndex {
	if p.mem != nil {
		return p.mem
	}
	mem := &txMemIndex{touched: map[string]bool{}, byType: map[string][]*txWrite{}, byKey: map[string][]*txWrite{}}
	for _, t := range p.targets {
		if t.skip == nil && t.ref != "" {
			mem.touched[t.ref] = true
		}
	}
	for _, w := range writes {
		if w.entries == nil {
			w.m["id"] = w.id
			w.entries = s.reg.Extract(w.typ, w.m)
		}
		mem.byType[w.typ] = append(mem.byType[w.typ], w)
		for _, e := range w.entries {
			k := w.typ + "\x00" + e.Param + "\x00" + e.Key
			mem.byKey[k] = append(mem.byKey[k], w)
		}
	}
	p.mem = mem
	return mem
}

// candidates returns the writes of typ that may match q: those having one
// of the keys of a clause that matches whole keys, else every write of typ.
func (m *txMemIndex) candidates(typ string, q *search.Query) []*txWrite {
	for i := range q.Clauses {
		keys, ok := q.Clauses[i].ExactKeys()
		if !ok {
			continue
		}
		var out []*txWrite
		seen := map[*txWrite]bool{}
		for _, k := range keys {
			for _, w := range m.byKey[typ+"\x00"+q.Clauses[i].Param.Code+"\x00"+k] {
				if !seen[w] {
					seen[w] = true
					out = append(out, w)
				}
			}
		}
		return out
	}
	return m.byType[typ]
}

// decodeBody reads the id and resourceType of an entry's resource.
func decodeBody(raw []byte) bodyInfo {
	var b bodyInfo
	_ = json.Unmarshal(raw, &b)
	return b
}
