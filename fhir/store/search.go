package store

import (
	"bytes"
	"encoding/binary"
	"slices"
	"sort"
	"strings"
	"time"
	"unsafe"

	"github.com/p2pserver/p2pserver/fhir/store/backend"

	"github.com/p2pserver/p2pserver/fhir/search"
)

type idSet map[string]struct{}

// Search returns the ids of the current resources of q.Type that match
// every clause of q, in q.Sort order (id order when unsorted, which is
// creation order for server-assigned ids). Only indexes are read, never the
// resources themselves.
func (tx *Tx) Search(q *search.Query) ([]string, error) {
	// Selective clauses are answered from their index; the others, once the
	// candidates are few, by checking each candidate's own index entries
	// rather than scanning a whole index.
	var narrow, wide []*search.Clause
	for i := range q.Clauses {
		if c := &q.Clauses[i]; isWide(c) {
			wide = append(wide, c)
		} else {
			narrow = append(narrow, c)
		}
	}
	var sets []idSet
	for _, c := range narrow {
		if err := tx.ctx.Err(); err != nil {
			return nil, err
		}
		set, err := tx.clauseIDs(q.Type, c, q.Visible)
		if err != nil {
			return nil, err
		}
		if len(set) == 0 {
			return nil, nil
		}
		sets = append(sets, set)
	}
	if q.Compartment != "" {
		set := tx.record(q.Type, q.Compartment, q.Linked)
		if len(set) == 0 {
			return nil, nil
		}
		sets = append(sets, set)
	}
	var ids []string
	have := len(sets) > 0
	if have {
		ids = intersect(sets)
	}
	for _, c := range wide {
		if err := tx.ctx.Err(); err != nil {
			return nil, err
		}
		if have && len(ids) <= filterLimit {
			ids = tx.filter(q.Type, ids, c)
		} else {
			set, err := tx.clauseIDs(q.Type, c, q.Visible)
			if err != nil {
				return nil, err
			}
			if have {
				ids = slices.DeleteFunc(ids, func(id string) bool { _, ok := set[id]; return !ok })
			} else {
				ids, have = intersect([]idSet{set}), true
			}
		}
		if len(ids) == 0 {
			return nil, nil
		}
	}
	if !have {
		ids = tx.AllIDs(q.Type)
	}
	if len(q.Sort) > 0 {
		tx.sortIDs(q.Type, ids, q.Sort)
	}
	return ids, nil
}

// compartment returns the ids of typ in the compartment of Patient/patient.
func (tx *Tx) compartment(typ, patient string) idSet {
	set := idSet{}
	if typ == "Patient" {
		if v, _ := tx.current(typ, patient); v != nil && !v.Deleted {
			set[patient] = struct{}{}
		}
	}
	k := search.ReferenceKey("Patient", patient)
	for _, p := range tx.s.reg.CompartmentParams(typ) {
		tx.scan(typ, p.Code, search.Range{Start: k + "\x00", End: k + "\x01"}, set)
	}
	return set
}

// record returns the ids of typ in the record of Patient/patient widened
// by the Patients linked to it (see search.Registry.InRecord).
func (tx *Tx) record(typ, patient string, linked []string) idSet {
	set := tx.compartment(typ, patient)
	for _, l := range linked {
		if typ != "Patient" {
			for id := range tx.compartment(typ, l) {
				set[id] = struct{}{}
			}
		} else if v, _ := tx.current(typ, l); v != nil && !v.Deleted {
			set[l] = struct{}{}
		}
	}
	return set
}

// InRecord reports whether the current version of typ/id belongs to the
// record of Patient/patient widened by the Patients linked to it (see
// search.Registry.InRecord).
func (tx *Tx) InRecord(typ, id, patient string, linked []string) bool {
	return tx.s.reg.InRecord(typ, id, tx.EntriesOf(typ, id), patient, linked)
}

// InCompartment reports whether the current version of typ/id belongs to
// the compartment of Patient/patient.
func (tx *Tx) InCompartment(typ, id, patient string) bool {
	return tx.s.reg.InCompartment(typ, id, tx.EntriesOf(typ, id), patient)
}

// CompartmentIDs returns the ids of the current resources of typ in the
// compartment of Patient/patient, in id order.
func (tx *Tx) CompartmentIDs(typ, patient string) []string {
	set := tx.compartment(typ, patient)
	ids := make([]string, 0, len(set))
	for id := range set {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Match reports whether the current version of typ/id matches every clause
// of q, without scanning: for deciding whether one write concerns a
// subscription. Chained clauses are checked by running them.
func (tx *Tx) Match(q *search.Query, id string) (bool, error) {
	if v, _ := tx.current(q.Type, id); v == nil || v.Deleted {
		return false, nil
	}
	entries := tx.EntriesOf(q.Type, id)
	if q.Compartment != "" && !tx.s.reg.InRecord(q.Type, id, entries, q.Compartment, q.Linked) {
		return false, nil
	}
	for i := range q.Clauses {
		c := &q.Clauses[i]
		chained := false
		for _, v := range c.Values {
			chained = chained || v.Chain != nil
		}
		if !chained {
			if !tx.matches(q.Type, id, c, entries) {
				return false, nil
			}
			continue
		}
		set, err := tx.clauseIDs(q.Type, c, q.Visible)
		if err != nil {
			return false, err
		}
		if _, ok := set[id]; !ok {
			return false, nil
		}
	}
	return true, nil
}

// matches reports whether typ/id, with these index entries, satisfies c
// (not chained): by its entries, and for a _lastUpdated value finer than
// their milliseconds by its stored meta.lastUpdated (see
// search.Clause.ByStamp).
func (tx *Tx) matches(typ, id string, c *search.Clause, entries []search.Entry) bool {
	if !search.Matches(c, entries) {
		return false
	}
	if c.ByStamp() {
		at, ok := tx.currentStamp(typ, id)
		return ok && c.MatchesStamp(at)
	}
	return true
}

// currentStamp returns the meta.lastUpdated of the current version of
// typ/id (microsecond precision, from its record's head); ok is false
// when there is none.
func (tx *Tx) currentStamp(typ, id string) (at time.Time, ok bool) {
	b := tx.typeBucket('R', typ)
	if b == nil {
		return time.Time{}, false
	}
	raw := b.Get([]byte(id))
	if len(raw) < 17 || recordDeleted(raw) {
		return time.Time{}, false
	}
	return time.UnixMicro(int64(binary.BigEndian.Uint64(raw[9:17]))).UTC(), true
}

// stampSortValue is the sort value of typ/id for _sort=_lastUpdated: its
// stored meta.lastUpdated to the microsecond (see
// search.StampSortValue), so that resources updated within one
// millisecond, which their index entries do not tell apart, sort in the
// order they were stamped.
func (tx *Tx) stampSortValue(typ, id string) (string, bool) {
	at, ok := tx.currentStamp(typ, id)
	if !ok {
		return "", false
	}
	return search.StampSortValue(at), true
}

// filterLimit is the candidate count below which checking candidates one
// by one beats scanning an index.
const filterLimit = 5000

// isWide reports whether answering c from its index means scanning all or
// much of it: :not, :missing, and open-ended value ranges.
func isWide(c *search.Clause) bool {
	if c.Not || c.Missing != nil {
		return true
	}
	for _, v := range c.Values {
		if v.Chain != nil {
			return false
		}
		for _, r := range v.Ranges {
			if r.Wide() {
				return true
			}
		}
	}
	return false
}

func intersect(sets []idSet) []string {
	sort.Slice(sets, func(i, j int) bool { return len(sets[i]) < len(sets[j]) })
	var ids []string
outer:
	for id := range sets[0] {
		for _, s := range sets[1:] {
			if _, ok := s[id]; !ok {
				continue outer
			}
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// filter keeps the ids whose own index entries satisfy c.
func (tx *Tx) filter(typ string, ids []string, c *search.Clause) []string {
	b := tx.typeBucket('X', typ)
	tx.prefetch(b, ids)
	if c.ByStamp() {
		tx.prefetch(tx.typeBucket('R', typ), ids)
	}
	out := ids[:0:0]
	for _, id := range ids {
		var entries []search.Entry
		if b != nil {
			entries = tx.decodeEntriesOf(b.Get([]byte(id)), nil, nil, id)
		}
		if tx.matches(typ, id, c, entries) {
			out = append(out, id)
		}
	}
	return out
}

// AllIDs returns the ids of every current (not deleted) resource of typ.
func (tx *Tx) AllIDs(typ string) []string {
	b := tx.typeBucket('R', typ)
	if b == nil {
		return nil
	}
	var ids []string
	c := headCursor(b)
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if !recordDeleted(v) {
			ids = append(ids, string(k))
		}
	}
	return ids
}

// CurrentVersions calls fn with the id and current version number of
// every resource of typ (deleted ones included, with deleted set), in id
// order, without reading their content, until fn returns false.
func (tx *Tx) CurrentVersions(typ string, fn func(id string, version int64, deleted bool) bool) {
	b := tx.typeBucket('R', typ)
	if b == nil {
		return
	}
	c := headCursor(b)
	for k, v := c.First(); k != nil; k, v = c.Next() {
		rec, err := decodeRecord(typ, string(k), v, false)
		if err != nil {
			continue
		}
		if !fn(rec.ID, rec.VersionID, rec.Deleted) {
			return
		}
	}
}

// ScanCurrent calls fn with each current (not deleted) resource of typ
// whose id sorts after after ("" for the first), in id order, until fn
// returns false. id, lastUpdated and json (the stored resource) are the
// database's own memory: valid only during the call, never to be kept or
// changed. Keep the transaction short (a few thousand resources at a
// time): a long read transaction holds back the database's growth.
func (tx *Tx) ScanCurrent(typ, after string, fn func(id string, lastUpdated time.Time, json []byte) bool) {
	b := tx.typeBucket('R', typ)
	if b == nil {
		return
	}
	c := b.Cursor()
	var k, v []byte
	if after == "" {
		k, v = c.First()
	} else if k, v = c.Seek([]byte(after)); k != nil && string(k) == after {
		k, v = c.Next()
	}
	var scratch []byte
	for ; k != nil; k, v = c.Next() {
		if len(v) < 17 || recordDeleted(v) {
			continue
		}
		lu := time.UnixMicro(int64(binary.BigEndian.Uint64(v[9:]))).UTC()
		json, err := recordJSON(typ, unsafeString(k), v, scratch)
		if err != nil {
			tx.s.log.Error("store: unreadable record", "type", typ, "id", string(k), "err", err)
			continue
		}
		if v[0]&flagPacked != 0 {
			scratch = json
		}
		if !fn(unsafeString(k), lu, json) {
			return
		}
	}
}

// unsafeString views b as a string without copying; b must not change
// while the string is used.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// Count returns how many current resources of typ there are.
func (tx *Tx) Count(typ string) int { return len(tx.AllIDs(typ)) }

// clauseIDs returns the ids of typ that satisfy c; the targets of a chain
// are only those visible reports true for (all when nil).
func (tx *Tx) clauseIDs(typ string, c *search.Clause, visible func(typ, id string) bool) (idSet, error) {
	if c.Missing != nil {
		return tx.missing(typ, c.Param.Code, *c.Missing), nil
	}
	set := idSet{}
	for _, v := range c.Values {
		if v.Chain != nil {
			if err := tx.chain(typ, c.Param.Code, v.Chain, set, visible); err != nil {
				return nil, err
			}
			continue
		}
		for _, r := range v.Ranges {
			tx.scan(typ, c.Param.Code, r, set)
		}
	}
	if c.ByStamp() {
		// The ranges held the boundary milliseconds too.
		ids := make([]string, 0, len(set))
		for id := range set {
			ids = append(ids, id)
		}
		tx.prefetch(tx.typeBucket('R', typ), ids)
		for _, id := range ids {
			if at, ok := tx.currentStamp(typ, id); !ok || !c.MatchesStamp(at) {
				delete(set, id)
			}
		}
	}
	if c.Not {
		not := idSet{}
		for _, id := range tx.AllIDs(typ) {
			if _, hit := set[id]; !hit {
				not[id] = struct{}{}
			}
		}
		return not, nil
	}
	return set, nil
}

// scan adds to set the ids of the index entries of param in r, read from
// its index or, for a parameter not stored, its sources' (see
// search.Source).
func (tx *Tx) scan(typ, param string, r search.Range, set idSet) {
	if param == "_id" {
		tx.idScan(typ, r, set)
		return
	}
	tx.indexReady()
	for _, src := range tx.s.indexSources(typ, param) {
		b := tx.btx.Bucket(indexBucket(typ, src.Code))
		if b == nil {
			continue
		}
		end := []byte(r.End)
		c := boundedCursor(b, end)
		for k, v := c.Seek([]byte(r.Start)); k != nil && bytes.Compare(k, end) < 0; k, v = c.Next() {
			key, id := splitIndexKey(k)
			if r.Match != nil && !r.Match(key, v) {
				continue
			}
			if src.Code != param && !tx.sourceHas(typ, param, src, key, v, id) {
				continue
			}
			set[id] = struct{}{}
		}
	}
}

// sourceHas reports whether the entry key (with payload) of src, a
// source of typ's param, found for id, is one of param's entries too: by
// the key when it tells, else by the resource's own entries.
func (tx *Tx) sourceHas(typ, param string, src search.Source, key string, payload []byte, id string) bool {
	if in, decided := tx.s.reg.Decides(src, key, payload); decided {
		return in
	}
	for _, e := range tx.EntriesOf(typ, id) {
		if e.Param == param && e.Key == key {
			return true
		}
	}
	return false
}

// idScan adds to set the ids of the current resources of typ whose _id
// entries (search.IDEntries) fall in r: for one value, one lookup; for
// anything else, a pass over the type's resources.
func (tx *Tx) idScan(typ string, r search.Range, set idSet) {
	in := func(id string) bool {
		for _, e := range search.IDEntries(id) {
			if r.Contains(e.Key, e.Payload) {
				return true
			}
		}
		return false
	}
	if ids, ok := exactIDs([]search.Range{r}); ok {
		for _, id := range ids {
			if _, deleted, ok := tx.CurrentVersion(typ, id); ok && !deleted && in(id) {
				set[id] = struct{}{}
			}
		}
		return
	}
	for _, id := range tx.AllIDs(typ) {
		if in(id) {
			set[id] = struct{}{}
		}
	}
}

// exactIDs returns the ids that _id ranges of exact values name, sorted,
// without repeats; ok is false when a range is not one exact value.
func exactIDs(rs []search.Range) (ids []string, ok bool) {
	for _, r := range rs {
		k, exact := strings.CutSuffix(r.Start, "\x00")
		if !exact || r.End != k+"\x01" {
			return nil, false
		}
		if id, ok := search.IDFromKey(k); ok && id != "" {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), true
}

// chain finds the resources of the chained types that match and that
// visible allows, then the resources of typ whose parameter refers to any
// of them.
func (tx *Tx) chain(typ, param string, ch *search.Chain, set idSet, visible func(typ, id string) bool) error {
	for _, t := range ch.Types {
		sub, err := ch.Clause(t)
		if err != nil {
			return err
		}
		targets, err := tx.clauseIDs(t, sub, visible)
		if err != nil {
			return err
		}
		for id := range targets {
			if visible != nil && !visible(t, id) {
				continue
			}
			k := search.ReferenceKey(t, id)
			tx.scan(typ, param, search.Range{Start: k + "\x00", End: k + "\x01"}, set)
		}
	}
	return nil
}

func (tx *Tx) missing(typ, param string, want bool) idSet {
	set := idSet{}
	b := tx.typeBucket('X', typ)
	all := tx.AllIDs(typ)
	tx.prefetch(b, all)
	for _, id := range all {
		has := false
		if b != nil {
			for _, e := range tx.decodeEntriesOf(b.Get([]byte(id)), nil, nil, id) {
				if e.Param == param {
					has = true
					break
				}
			}
		}
		if has != want {
			set[id] = struct{}{}
		}
	}
	return set
}

func (tx *Tx) sortIDs(typ string, ids []string, keys []search.SortKey) {
	type row struct {
		id   string
		vals []string
		has  []bool
	}
	rows := make([]row, len(ids))
	b := tx.typeBucket('X', typ)
	tx.prefetch(b, ids)
	for i, id := range ids {
		rows[i] = row{id: id, vals: make([]string, len(keys)), has: make([]bool, len(keys))}
		var entries []search.Entry
		if b != nil {
			entries = tx.decodeEntriesOf(b.Get([]byte(id)), nil, nil, id)
		}
		for j, k := range keys {
			var ks []search.Entry
			for _, e := range entries {
				if e.Param == k.Param.Code {
					ks = append(ks, e)
				}
			}
			rows[i].vals[j], rows[i].has[j] = search.SortValue(k.Param, ks, k.Desc)
			if k.Param.Code == "_lastUpdated" {
				rows[i].vals[j], rows[i].has[j] = tx.stampSortValue(typ, id)
			}
		}
	}
	sort.SliceStable(rows, func(a, c int) bool {
		for j, k := range keys {
			ra, rc := rows[a], rows[c]
			switch {
			case ra.has[j] != rc.has[j]:
				return ra.has[j] // resources without a value go last
			case ra.vals[j] == rc.vals[j]:
				continue
			case k.Desc:
				return ra.vals[j] > rc.vals[j]
			default:
				return ra.vals[j] < rc.vals[j]
			}
		}
		return rows[a].id < rows[c].id
	})
	for i := range rows {
		ids[i] = rows[i].id
	}
}

// ReadCurrent returns the current versions of typ/ids that exist and are
// not deleted, in the order given.
func (tx *Tx) ReadCurrent(typ string, ids []string) ([]*Version, error) {
	out := make([]*Version, 0, len(ids))
	tx.prefetch(tx.typeBucket('R', typ), ids)
	for _, id := range ids {
		v, err := tx.current(typ, id)
		if err != nil {
			return nil, err
		}
		if v != nil && !v.Deleted {
			out = append(out, v)
		}
	}
	return out, nil
}

// Included returns the resources that matches (of type typ) refer to
// through the _include parameters, without duplicates or the matches
// themselves.
func (tx *Tx) Included(typ string, matches []string, incs []search.Include) ([]*Version, error) {
	seen := map[string]bool{}
	for _, id := range matches {
		seen[typ+"/"+id] = true
	}
	var out []*Version
	for _, id := range matches {
		for _, e := range tx.EntriesOf(typ, id) {
			ref, ok := search.ReferenceFromKey(e.Key)
			if !ok || !wantInclude(incs, e.Param, ref) || seen[ref] {
				continue
			}
			seen[ref] = true
			rt, rid, ok := strings.Cut(ref, "/")
			if !ok || strings.Contains(rid, "/") {
				continue // absolute or malformed: not ours to include
			}
			v, err := tx.current(rt, rid)
			if err != nil {
				return nil, err
			}
			if v != nil && !v.Deleted {
				out = append(out, v)
			}
		}
	}
	return out, nil
}

func wantInclude(incs []search.Include, param, ref string) bool {
	for _, inc := range incs {
		if inc.Param != "*" && inc.Param != param {
			continue
		}
		if inc.TargetType == "" || strings.HasPrefix(ref, inc.TargetType+"/") {
			return true
		}
	}
	return false
}

// RevIncluded returns resources that refer to the matches (of type typ)
// through the _revinclude parameters.
func (tx *Tx) RevIncluded(typ string, matches []string, incs []search.Include) ([]*Version, error) {
	var out []*Version
	seen := map[string]bool{}
	for _, inc := range incs {
		if inc.TargetType != "" && inc.TargetType != typ {
			continue
		}
		params := []string{inc.Param}
		if inc.Param == "*" {
			params = params[:0]
			for _, p := range tx.s.reg.ReferenceParams(inc.Type, typ) {
				params = append(params, p.Code)
			}
		}
		for _, param := range params {
			set := idSet{}
			for _, id := range matches {
				k := search.ReferenceKey(typ, id)
				tx.scan(inc.Type, param, search.Range{Start: k + "\x00", End: k + "\x01"}, set)
			}
			ids := make([]string, 0, len(set))
			for id := range set {
				if !seen[inc.Type+"/"+id] {
					seen[inc.Type+"/"+id] = true
					ids = append(ids, id)
				}
			}
			slices.Sort(ids)
			vs, err := tx.ReadCurrent(inc.Type, ids)
			if err != nil {
				return nil, err
			}
			out = append(out, vs...)
		}
	}
	return out, nil
}

// Referencing returns the ids of resources of typ whose parameter param
// refers to target/id (for example compartment membership).
func (tx *Tx) Referencing(typ, param, target, id string) []string {
	set := idSet{}
	k := search.ReferenceKey(target, id)
	tx.scan(typ, param, search.Range{Start: k + "\x00", End: k + "\x01"}, set)
	ids := make([]string, 0, len(set))
	for id := range set {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// boundedCursor returns a cursor over b for a scan that stops before
// end (see backend.BoundedCursorer).
func boundedCursor(b backend.Bucket, end []byte) backend.Cursor {
	if bc, ok := b.(backend.BoundedCursorer); ok {
		return bc.BoundedCursor(end)
	}
	return b.Cursor()
}

// headCursor returns a cursor over a resource bucket whose values are at
// least the record's head (see decodeRecord), and need be no more.
func headCursor(b backend.Bucket) backend.Cursor {
	if p, ok := b.(backend.PrefixCursorer); ok {
		return p.PrefixCursor(recordFixed)
	}
	return b.Cursor()
}

// prefetch has the backend read the keys ids of b in one go, when reads
// cost it a round trip each (see backend.Prefetcher).
func (tx *Tx) prefetch(b backend.Bucket, ids []string) {
	p, ok := b.(backend.Prefetcher)
	if !ok || len(ids) < 2 {
		return
	}
	for len(ids) > 0 {
		n := min(len(ids), prefetchBatch)
		keys := make([][]byte, n)
		for i, id := range ids[:n] {
			keys[i] = []byte(id)
		}
		p.Prefetch(keys)
		ids = ids[n:]
	}
}

// prefetchBatch is how many keys one prefetch reads.
const prefetchBatch = 1000
