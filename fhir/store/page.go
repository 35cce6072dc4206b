package store

import (
	"bytes"
	"container/heap"
	"slices"

	"github.com/p2pserver/p2pserver/fhir/store/backend"

	"github.com/p2pserver/p2pserver/fhir/search"
)

// Position is where a page of a search ends: the sort values (as
// search.SortValue gives them, with whether the resource had one) and the
// id of the last resource of the page. The next page starts after it.
// Without _sort only ID counts.
type Position struct {
	ID   string
	Vals []string
	Has  []bool
}

// Keep, given ids of a search's candidates in the order they are met,
// returns those the requester may see, in the same order (for a policy's
// filter). A nil Keep keeps all.
type Keep func(ids []string) ([]string, error)

// keepBatch is how many candidates go to a Keep at once: what a page
// holds beyond its own entries.
const keepBatch = 256

// SearchPage returns up to n ids of the current resources of q.Type that
// match q and that keep allows, in q.Sort order (id order when unsorted),
// starting after after (nil for the first page), and the Position of the
// last one. more reports whether any match follows it.
//
// It reads the matches lazily: unsorted, from the position onwards until
// n+1 are found (index entries of one exact key, or the type's resources
// in id order, checked one by one against every clause); sorted, every
// match once, keeping only the n+1 first after the position. Memory is
// bounded by n (plus a keepBatch of candidates), not by the number of
// matches, except for what a chained clause or a member's compartment
// brings (their target sets, computed once per page). Time is that of the
// candidates read: proportional to the rejected and served ones unsorted,
// to all matches sorted.
func (tx *Tx) SearchPage(q *search.Query, after *Position, n int, keep Keep) (ids []string, last *Position, more bool, err error) {
	if n <= 0 {
		return nil, nil, false, nil
	}
	start := ""
	if after != nil {
		start = after.ID
	}
	page := &pageRead{}
	if len(q.Sort) == 0 {
		// The page is the first matches after start, in id order.
		page.after, page.first = start, min(n+1, keepBatch)
	}
	m, err := tx.newMatcher(q, page)
	if err != nil || m == nil {
		return nil, nil, false, err
	}
	if len(q.Sort) == 0 {
		var out []string
		err := m.each(start, min(n+1, keepBatch), keep, func(id string, _ []search.Entry) bool {
			out = append(out, id)
			return len(out) <= n
		})
		if err != nil {
			return nil, nil, false, err
		}
		if more = len(out) > n; more {
			out = out[:n]
		}
		if len(out) > 0 {
			last = &Position{ID: out[len(out)-1]}
		}
		return out, last, more, nil
	}
	h := &rowHeap{keys: q.Sort}
	var from *row
	if after != nil {
		from = &row{id: after.ID, vals: after.Vals, has: after.Has}
	}
	// One row is filled per candidate and kept only if it goes into the
	// heap; the one it displaces is filled next.
	r := &row{vals: make([]string, len(q.Sort)), has: make([]bool, len(q.Sort))}
	err = m.each("", keepBatch, keep, func(id string, entries []search.Entry) bool {
		fillRow(r, id, entries, q.Sort)
		for j, k := range q.Sort {
			if k.Param.Code == "_lastUpdated" {
				r.vals[j], r.has[j] = tx.stampSortValue(q.Type, id)
			}
		}
		if from != nil && !h.less(from, r) {
			return true
		}
		if h.Len() <= n {
			heap.Push(h, r)
			r = &row{vals: make([]string, len(q.Sort)), has: make([]bool, len(q.Sort))}
		} else if h.less(r, h.rows[0]) {
			h.rows[0], r = r, h.rows[0]
			heap.Fix(h, 0)
		}
		return true
	})
	if err != nil {
		return nil, nil, false, err
	}
	rows := h.rows
	slices.SortFunc(rows, func(a, b *row) int {
		if h.less(a, b) {
			return -1
		}
		return 1
	})
	if more = len(rows) > n; more {
		rows = rows[:n]
	}
	for _, r := range rows {
		ids = append(ids, r.id)
	}
	if len(rows) > 0 {
		r := rows[len(rows)-1]
		last = &Position{ID: r.id, Vals: r.vals, Has: r.has}
	}
	return ids, last, more, nil
}

// SearchCount returns how many current resources of q.Type match q and
// keep allows, reading every match once (time proportional to the
// matches, memory to a keepBatch).
func (tx *Tx) SearchCount(q *search.Query, keep Keep) (int, error) {
	m, err := tx.newMatcher(q, nil)
	if err != nil || m == nil {
		return 0, err
	}
	count := 0
	err = m.each("", keepBatch, keep, func(string, []search.Entry) bool { count++; return true })
	return count, err
}

// matcher streams the candidates of a query in id order and checks each
// against the query's clauses by its own index entries.
type matcher struct {
	tx      *Tx
	q       *search.Query
	x       interface{ Get([]byte) []byte }
	keys    []string // drive by these exact keys of param (when set)
	param   string
	within  []string // or by these ids (a compartment, or a small range), sorted
	bounded bool     // within is a compartment: InRecord applies
	listed  bool     // within is the ids of a selective range clause
	// indexed: the candidates are ids of index entries, which only
	// current resources that are not deleted have (a delete removes its
	// entries in its transaction), so their records need not be read.
	indexed bool
	// decided is the driving clause of exact keys when it is of a
	// parameter with its own index: keyIDs then yields only the ids of
	// the entries its ranges hold (keyMatch, their filters of key and
	// payload, parallel to keys), so it is not checked again. entries is
	// false when no clause, compartment or sort key needs a candidate's
	// index entries, which are then not read.
	decided  *search.Clause
	keyMatch []func(key string, payload []byte) bool
	entries  bool
	chained  map[*search.Clause]idSet
	// params are those whose entries the clauses and sort keys read (nil:
	// all, for a compartment's rule).
	params map[string]bool
	buf    []search.Entry
	// page is what a page reads of the candidates (nil: a count, which
	// reads none of their records unless match does).
	page *pageRead
	// stamps is set when a clause or sort key reads the candidates'
	// records (their meta.lastUpdated to the microsecond).
	stamps bool
}

// pageRead is what serving a page of a search reads of its candidates
// beyond their ids: their records, which the page's rendering reads
// next. When first is not 0 (an unsorted page: the first matches after
// after, in id order), a backend that can (backend.Joiner) reads the
// records of the first first candidates after after with the index
// entries that name them.
type pageRead struct {
	after string
	first int
}

// newMatcher prepares q's candidate stream, for a page when page is not
// nil (see pageRead), else for a count; nil when nothing can match.
func (tx *Tx) newMatcher(q *search.Query, page *pageRead) (*matcher, error) {
	tx.indexReady()
	if tx.typeBucket('R', q.Type) == nil {
		return nil, nil
	}
	m := &matcher{tx: tx, q: q, chained: map[*search.Clause]idSet{}, entries: true, page: page}
	for i := range q.Clauses {
		m.stamps = m.stamps || q.Clauses[i].ByStamp()
	}
	for _, k := range q.Sort {
		m.stamps = m.stamps || k.Param.Code == "_lastUpdated"
	}
	if x := tx.typeBucket('X', q.Type); x != nil {
		m.x = x
	}
	for i := range q.Clauses {
		c := &q.Clauses[i]
		for _, v := range c.Values {
			if v.Chain != nil {
				set, err := tx.clauseIDs(q.Type, c, q.Visible)
				if err != nil {
					return nil, err
				}
				m.chained[c] = set
				break
			}
		}
	}
	m.params = map[string]bool{}
	for _, c := range q.Clauses {
		m.params[c.Param.Code] = true
	}
	for _, k := range q.Sort {
		m.params[k.Param.Code] = true
	}
	if q.Compartment != "" {
		m.params = nil
		set := tx.record(q.Type, q.Compartment, q.Linked)
		m.within = make([]string, 0, len(set))
		for id := range set {
			m.within = append(m.within, id)
		}
		slices.Sort(m.within)
		m.bounded = true
		return m, nil
	}
	// An _id clause of exact values drives: its ids are the candidates.
	for i := range q.Clauses {
		c := &q.Clauses[i]
		if c.Param.Code != "_id" || c.Not || c.Missing != nil {
			continue
		}
		var rs []search.Range
		for _, v := range c.Values {
			rs = append(rs, v.Ranges...)
		}
		if ids, ok := exactIDs(rs); ok && (!m.listed || len(ids) < len(m.within)) {
			m.within, m.listed = ids, true
		}
	}
	if m.listed {
		return m, nil
	}
	// The clause with the fewest exact keys drives, if any has them: its
	// index entries of one key are in id order.
	for i := range q.Clauses {
		c := &q.Clauses[i]
		if c.Param.Code == "_id" {
			continue // not indexed (see idScan)
		}
		if keys, ok := c.ExactKeys(); ok && (m.keys == nil || len(keys) < len(m.keys)) {
			m.keys, m.param, m.decided = keys, c.Param.Code, c
		}
	}
	if m.keys != nil {
		m.indexed = true
		if tx.s.stored(q.Type, m.param) {
			for _, v := range m.decided.Values {
				for _, r := range v.Ranges {
					m.keyMatch = append(m.keyMatch, r.Match)
				}
			}
		} else {
			// Found through others' indexes: each candidate is checked.
			m.decided = nil
		}
		m.entries = len(q.Sort) > 0
		for i := range q.Clauses {
			c := &q.Clauses[i]
			if _, chained := m.chained[c]; !chained && c != m.decided {
				m.entries = true
			}
		}
		return m, nil
	}
	// A selective range clause (a date, a string prefix) drives when its
	// index range holds few entries: its ids, sorted.
	for i := range q.Clauses {
		c := &q.Clauses[i]
		if _, chained := m.chained[c]; chained || isWide(c) || c.Missing != nil || c.Not || c.Param.Code == "_id" {
			continue
		}
		if ids, ok := tx.rangeIDs(q.Type, c, rangeLimit, m.rangeJoin); ok && (!m.listed || len(ids) < len(m.within)) {
			m.within, m.listed, m.indexed = ids, true, true
		}
	}
	return m, nil
}

// prefetchRun is how many candidates are read at once when the backend
// prefetches (see backend.Prefetcher).
const prefetchRun = 64

// rangeLimit is the most index entries of a range clause read to drive a
// page: beyond it the type's resources are read in id order instead, so a
// page holds at most this many ids.
const rangeLimit = 10000

// rangeIDs returns the sorted ids c's ranges hold, if they hold at most
// limit index entries; each index is read through join (nil: as it is).
// A parameter not stored reads its sources' indexes: the ids are then
// candidates that every one is checked (see matcher.match).
func (tx *Tx) rangeIDs(typ string, c *search.Clause, limit int, join func(backend.Bucket) backend.Bucket) ([]string, bool) {
	var ids []string
	n := 0
	for _, src := range tx.s.indexSources(typ, c.Param.Code) {
		b := tx.btx.Bucket(indexBucket(typ, src.Code))
		if b == nil {
			continue
		}
		if join != nil {
			b = join(b)
		}
		for _, v := range c.Values {
			for _, r := range v.Ranges {
				end := []byte(r.End)
				cur := boundedCursor(b, end)
				for k, _ := cur.Seek([]byte(r.Start)); k != nil && bytes.Compare(k, end) < 0; k, _ = cur.Next() {
					if n++; n > limit {
						return nil, false
					}
					_, id := splitIndexKey(k)
					ids = append(ids, id)
				}
			}
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), true
}

// each calls fn with the id and index entries of every match whose id
// sorts after start, in id order, passed through keep in batches of size,
// until fn returns false.
func (m *matcher) each(start string, size int, keep Keep, fn func(id string, entries []search.Entry) bool) error {
	type cand struct {
		id      string
		entries []search.Entry
	}
	var batch []cand
	stopped := false
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		ids := make([]string, len(batch))
		for i, c := range batch {
			ids[i] = c.id
		}
		if keep != nil {
			var err error
			if ids, err = keep(ids); err != nil {
				return err
			}
		}
		j := 0
		for _, c := range batch {
			if j < len(ids) && ids[j] == c.id {
				j++
				if !fn(c.id, c.entries) {
					stopped = true
					break
				}
			}
		}
		batch = batch[:0]
		return nil
	}
	var err error
	n := 0
	check := func(id string) bool {
		if n++; n%1024 == 0 {
			if err = m.tx.ctx.Err(); err != nil {
				return false
			}
		}
		entries, ok := m.match(id)
		if !ok {
			return true
		}
		batch = append(batch, cand{id, entries})
		if len(batch) >= size {
			if err = flush(); err != nil || stopped {
				return false
			}
		}
		return true
	}
	if prefetch := m.prefetcher(); prefetch != nil {
		// A backend whose reads cost a round trip reads what match and
		// the page read of the candidates a run at a time.
		var run []string
		more := true
		checkRun := func() {
			keys := make([][]byte, len(run))
			for i, id := range run {
				keys[i] = []byte(id)
			}
			prefetch(keys)
			for _, id := range run {
				if more = check(id); !more {
					break
				}
			}
			run = run[:0]
		}
		m.ids(start, func(id string) bool {
			if run = append(run, id); len(run) >= min(size, prefetchRun) {
				checkRun()
			}
			return more
		})
		if more && len(run) > 0 {
			checkRun()
		}
	} else {
		m.ids(start, check)
	}
	if err != nil || stopped {
		return err
	}
	return flush()
}

// prefetcher returns what reads ahead, a run of candidates at a time,
// what match and the page read of them, on a backend whose reads cost a
// round trip (backend.Prefetcher): their records for a page, or when
// match reads them (candidates not from an index, a _lastUpdated finer
// than milliseconds), with their index entries when match reads those;
// else their index entries alone. nil: nothing to read ahead.
func (m *matcher) prefetcher() func(keys [][]byte) {
	entries := m.readsEntries()
	r := m.tx.typeBucket('R', m.q.Type)
	if m.page != nil || !m.indexed || m.stamps {
		if p, ok := r.(backend.PrefetcherWith); ok {
			var also []byte
			if entries {
				also = bucketName("X", m.q.Type)
			}
			return func(keys [][]byte) { p.PrefetchWith(keys, also) }
		}
		if p, ok := r.(backend.Prefetcher); ok {
			return p.Prefetch
		}
		return nil
	}
	if p, ok := m.x.(backend.Prefetcher); ok && entries {
		return p.Prefetch
	}
	return nil
}

// join returns the index bucket b read for a page (see pageRead): its
// cursors' first read is of read entries (0: as many as the backend
// reads at first), and reads the records of those of the first first
// that come after the page's start, with their index entries where they
// are read (see readsEntries, backend.Joiner).
func (m *matcher) join(b backend.Bucket, read, first int) backend.Bucket {
	j, ok := b.(backend.Joiner)
	if !ok || m.page == nil || m.page.first == 0 {
		return b
	}
	spec := backend.Join{Records: bucketName("R", m.q.Type), After: []byte(m.page.after), Read: read, First: first}
	if m.readsEntries() {
		spec.Entries = bucketName("X", m.q.Type)
	}
	return j.Join(spec)
}

// rangeJoin is join for the read of a range clause's entries (see
// rangeIDs), which are read whole, in key order, and give the page's
// candidates only once sorted: the first read is the backend's usual
// one, and reads the records of a page's worth of its entries, those of
// the whole page when the range holds no more.
func (m *matcher) rangeJoin(b backend.Bucket) backend.Bucket {
	if m.page == nil {
		return b
	}
	return m.join(b, 0, m.page.first)
}

// readsEntries reports whether the candidates' index entries are read:
// by match, or for a page by the matches' _include or by a policy that
// confines the search (q's Visible), whose filter and check of what is
// served may read them.
func (m *matcher) readsEntries() bool {
	if m.x == nil {
		return false
	}
	return m.entries || (m.page != nil && (len(m.q.Include) > 0 || m.q.Visible != nil))
}

// match reports whether the current resource id matches every clause, with
// its index entries.
func (m *matcher) match(id string) ([]search.Entry, bool) {
	if !m.indexed {
		if _, deleted, ok := m.tx.CurrentVersion(m.q.Type, id); !ok || deleted {
			return nil, false
		}
	}
	var entries []search.Entry
	if m.x != nil && m.entries {
		// Reused between candidates that do not match; one that matches
		// keeps its entries (they go into a batch).
		entries = m.tx.decodeEntriesOf(m.x.Get([]byte(id)), m.params, m.buf[:0], id)
		m.buf = entries
	}
	if m.bounded && !m.tx.s.reg.InRecord(m.q.Type, id, entries, m.q.Compartment, m.q.Linked) {
		return nil, false
	}
	for i := range m.q.Clauses {
		c := &m.q.Clauses[i]
		if set, ok := m.chained[c]; ok {
			if _, hit := set[id]; !hit {
				return nil, false
			}
			continue
		}
		if c != m.decided && !m.tx.matches(m.q.Type, id, c, entries) {
			return nil, false
		}
	}
	m.buf = nil
	return entries, true
}

// ids calls fn with the candidate ids after start in id order, without
// repeats, until it returns false.
func (m *matcher) ids(start string, fn func(id string) bool) {
	switch {
	case m.bounded || m.listed:
		i, _ := slices.BinarySearch(m.within, start)
		for ; i < len(m.within); i++ {
			if id := m.within[i]; id > start && !fn(id) {
				return
			}
		}
	case m.keys != nil:
		m.keyIDs(start, fn)
	default:
		// Every resource of the type, in id order.
		c := headCursor(m.tx.typeBucket('R', m.q.Type))
		var k []byte
		if start == "" {
			k, _ = c.First()
		} else if k, _ = c.Seek([]byte(start)); k != nil && string(k) == start {
			k, _ = c.Next()
		}
		for ; k != nil; k, _ = c.Next() {
			if !fn(string(k)) {
				return
			}
		}
	}
}

// keyIDs merges the ids under each exact key of the driving parameter's
// index (each run in id order) into one id order, of the entries the
// key's range filter (keyMatch) keeps; for a parameter not stored, under
// each key of each of its sources' indexes (candidates that match
// checks).
func (m *matcher) keyIDs(start string, fn func(id string) bool) {
	var buckets []backend.Bucket
	for _, src := range m.tx.s.indexSources(m.q.Type, m.param) {
		if b := m.tx.btx.Bucket(indexBucket(m.q.Type, src.Code)); b != nil {
			// A run's first read holds the page's candidates it can
			// give, one that may precede them (see uuidSeek), and the
			// one the merge moves on to before the page ends.
			if m.page != nil {
				b = m.join(b, m.page.first+2, m.page.first+2)
			}
			buckets = append(buckets, b)
		}
	}
	// Under one key, the ids in 16 bytes come first, then the others, each
	// part in id order (see appendIndexID): each part is a run, read by
	// its own bounded cursor, and the runs of a bucket are sought
	// together (see backend.BoundedSeeker).
	type run struct {
		c      interface{ Next() ([]byte, []byte) }
		prefix []byte // the keys of the run start with it
		skip   int    // the id starts after it
		key    string // the entry key
		match  func(key string, payload []byte) bool
		id     string
		ok     bool
	}
	// skip passes the entries of r the range's filter refuses (a value
	// crafted to look like a long value's key).
	skip := func(r *run, k, v []byte) []byte {
		for r.match != nil && k != nil && bytes.HasPrefix(k, r.prefix) && !r.match(r.key, v) {
			k, v = r.c.Next()
		}
		return k
	}
	runs := make([]*run, 0, 2*len(m.keys)*len(buckets))
	for _, b := range buckets {
		first := len(runs)
		var seeks, ends [][]byte
		for i, key := range m.keys {
			var match func(string, []byte) bool
			if m.keyMatch != nil {
				match = m.keyMatch[i]
			}
			text := append([]byte(key), 0)
			bin := append(slices.Clip(text), binaryID)
			for _, r := range []*run{{prefix: bin, skip: len(text), key: key, match: match}, {prefix: text, skip: len(text), key: key, match: match}} {
				// The run ends before its prefix's last byte plus one.
				end := bytes.Clone(r.prefix)
				end[len(end)-1]++
				seek := slices.Clip(r.prefix)
				switch {
				case len(r.prefix) == len(text):
					seek = append(seek, max(start, string(rune(binaryID+1)))...)
				case start != "":
					u := uuidSeek(start)
					seek = append(seek, u[:]...)
				}
				seeks, ends = append(seeks, seek), append(ends, end)
				runs = append(runs, r)
			}
		}
		// Every run's first entries in one go where the database can
		// (on PostgreSQL, one round trip for all of them).
		var cs []backend.Cursor
		var ks, vs [][]byte
		if bs, ok := b.(backend.BoundedSeeker); ok {
			cs, ks, vs = bs.SeekBounded(seeks, ends)
		} else {
			for i := range seeks {
				c := boundedCursor(b, ends[i])
				k, v := c.Seek(seeks[i])
				cs, ks, vs = append(cs, c), append(ks, k), append(vs, v)
			}
		}
		for i, r := range runs[first:] {
			c, k, v := cs[i], ks[i], vs[i]
			r.c = c
			for k != nil && bytes.HasPrefix(k, r.prefix) && start != "" && indexID(k[r.skip:]) <= start {
				k, v = c.Next()
			}
			if k = skip(r, k, v); k != nil && bytes.HasPrefix(k, r.prefix) {
				r.id, r.ok = indexID(k[r.skip:]), true
			}
		}
	}
	advance := func(r *run) {
		k, v := r.c.Next()
		k = skip(r, k, v)
		r.ok = k != nil && bytes.HasPrefix(k, r.prefix)
		if r.ok {
			r.id = indexID(k[r.skip:])
		}
	}
	for {
		var min *run
		for _, r := range runs {
			if r.ok && (min == nil || r.id < min.id) {
				min = r
			}
		}
		if min == nil {
			return
		}
		id := min.id
		for _, r := range runs {
			for r.ok && r.id == id {
				advance(r)
			}
		}
		if !fn(id) {
			return
		}
	}
}

type row struct {
	id   string
	vals []string
	has  []bool
}

// fillRow sets r to the sort values of id (see search.SortValue).
func fillRow(r *row, id string, entries []search.Entry, keys []search.SortKey) {
	r.id = id
	var ks []search.Entry
	for j, k := range keys {
		ks = ks[:0]
		for _, e := range entries {
			if e.Param == k.Param.Code {
				ks = append(ks, e)
			}
		}
		r.vals[j], r.has[j] = search.SortValue(k.Param, ks, k.Desc)
	}
}

// rowHeap keeps the first rows in sort order, the greatest on top so that
// it is the one a smaller row replaces.
type rowHeap struct {
	keys []search.SortKey
	rows []*row
}

// less orders rows by the sort keys (resources without a value last,
// whatever the direction: FHIR R4 search.html#sort leaves it to the
// server), then by id.
func (h *rowHeap) less(a, b *row) bool {
	for j, k := range h.keys {
		ah, bh := j < len(a.has) && a.has[j], j < len(b.has) && b.has[j]
		var av, bv string
		if j < len(a.vals) {
			av = a.vals[j]
		}
		if j < len(b.vals) {
			bv = b.vals[j]
		}
		switch {
		case ah != bh:
			return ah
		case !ah || av == bv:
			continue
		case k.Desc:
			return av > bv
		default:
			return av < bv
		}
	}
	return a.id < b.id
}

func (h *rowHeap) Len() int           { return len(h.rows) }
func (h *rowHeap) Less(i, j int) bool { return h.less(h.rows[j], h.rows[i]) }
func (h *rowHeap) Swap(i, j int)      { h.rows[i], h.rows[j] = h.rows[j], h.rows[i] }
func (h *rowHeap) Push(x any)         { h.rows = append(h.rows, x.(*row)) }
func (h *rowHeap) Pop() any {
	r := h.rows[len(h.rows)-1]
	h.rows = h.rows[:len(h.rows)-1]
	return r
}

// uuidSeek returns where a run of ids in 16 bytes (see appendIndexID)
// resumes after start, which may be any id: the bytes of the greatest
// UUID (in lowercase hexadecimal with dashes) not after start, or of the
// least one after it when none is before. At most one id of the run lies
// between it and start, so that a page that ended on an id kept as text
// (a client's or an ingested id, which sort among the UUIDs by their
// characters) does not read again every UUID under the value.
func uuidSeek(start string) [16]byte {
	isDash := func(i int) bool { return i == 8 || i == 13 || i == 18 || i == 23 }
	// fill completes prefix (a valid start of a UUID) with c at every
	// hexadecimal place.
	fill := func(prefix string, c byte) [16]byte {
		b := []byte(prefix)
		for i := len(b); i < 36; i++ {
			if isDash(i) {
				b = append(b, '-')
			} else {
				b = append(b, c)
			}
		}
		u, _ := uuidBytes(string(b))
		return u
	}
	for i := 0; i < 36; i++ {
		if i == len(start) {
			// Every UUID that starts with start is after it.
			return fill(start, '0')
		}
		c := start[i]
		if isDash(i) {
			switch {
			case c == '-':
				continue
			case c < '-':
				return fill(start[:i], '0')
			default:
				return fill(start[:i], 'f')
			}
		}
		switch {
		case c >= '0' && c <= '9' || c >= 'a' && c <= 'f':
			continue
		case c < '0':
			return fill(start[:i], '0')
		case c < 'a':
			// Between the digits and the lowercase letters (':' to '`',
			// the uppercase letters): the first UUID after has an 'a'.
			return fill(start[:i]+"a", '0')
		default:
			return fill(start[:i], 'f')
		}
	}
	// start is a UUID, or longer than one: the UUID it starts with.
	return fill(start[:36], '0')
}
