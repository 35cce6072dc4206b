package pgdb

import (
	"bytes"
	"slices"
	"sort"

	"github.com/jackc/pgx/v5"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// cursor merges the database's rows (read in chunks) with the
// transaction's changes, which win on a key both have.
type cursor struct {
	b      *bucket
	prefix int    // >0: values cut to this many bytes
	end    []byte // non-nil: the cursor lands on no key at or after it

	cur   []byte // the key the cursor is on; nil: none
	db    chunk
	limit int // rows per read, growing
	// join is what the first read reads too, if it is forward (see
	// bucket.Join); joining is it while that read's rows are scanned.
	join, joining *joinSpec
}

// chunk is rows read from the database from a bound in one direction:
// every row between from and the last one, in that order.
type chunk struct {
	valid bool
	fwd   bool
	from  bound
	keys  [][]byte
	vals  [][]byte
	more  bool // rows may follow the last one
}

// A cursor reads firstChunk rows first, boundedChunk when bounded (it
// reads no row past its range, and its range is often what is wanted),
// then four times more each read, up to maxChunk.
const (
	firstChunk   = 16
	boundedChunk = 64
	maxChunk     = 1024
)

func (c *cursor) First() ([]byte, []byte) { return c.move(bound{none: true}, true) }
func (c *cursor) Last() ([]byte, []byte)  { return c.move(bound{none: true}, false) }

func (c *cursor) Seek(seek []byte) ([]byte, []byte) {
	return c.move(bound{key: append([]byte{}, seek...), incl: true}, true)
}

func (c *cursor) Next() ([]byte, []byte) {
	if c.cur == nil {
		return nil, nil
	}
	return c.move(bound{key: c.cur}, true)
}

func (c *cursor) Prev() ([]byte, []byte) {
	if c.cur == nil {
		return nil, nil
	}
	return c.move(bound{key: c.cur}, false)
}

// beyond reports whether k lies past b in the direction.
func beyond(k []byte, b bound, fwd bool) bool {
	if b.none {
		return true
	}
	c := bytes.Compare(k, b.key)
	if !fwd {
		c = -c
	}
	return c > 0 || (c == 0 && b.incl)
}

// before reports whether a comes before b in the direction.
func before(a, b []byte, fwd bool) bool {
	if fwd {
		return bytes.Compare(a, b) < 0
	}
	return bytes.Compare(a, b) > 0
}

func (c *cursor) move(b bound, fwd bool) ([]byte, []byte) {
	o, t := c.b.o, c.b.t
	if c.end != nil && !fwd && (b.none || bytes.Compare(b.key, c.end) >= 0) {
		// Backward from past the range: from its end.
		b = bound{key: c.end}
	}
	for {
		if t.err != nil {
			c.cur = nil
			return nil, nil
		}
		var dk, dv []byte
		if !o.noRows() {
			dk, dv = c.dbNext(b, fwd)
			if t.err != nil {
				c.cur = nil
				return nil, nil
			}
		}
		ok := c.dirtyNext(b, fwd)
		if c.end != nil {
			if dk != nil && bytes.Compare(dk, c.end) >= 0 {
				dk, dv = nil, nil
			}
			if ok != nil && bytes.Compare(ok, c.end) >= 0 {
				ok = nil
			}
		}
		switch {
		case dk == nil && ok == nil:
			c.cur = nil
			return nil, nil
		case ok != nil && (dk == nil || !before(dk, ok, fwd)):
			// The transaction's change: a deletion hides the row.
			e := o.m[string(ok)]
			if e.v == nil {
				b = bound{key: ok}
				continue
			}
			c.cur = ok
			return ok, c.cut(e.v)
		default:
			c.cur = dk
			return dk, dv
		}
	}
}

func (c *cursor) cut(v []byte) []byte {
	if c.prefix > 0 && len(v) > c.prefix {
		return v[:c.prefix]
	}
	return v
}

// dirtyNext returns the first key the transaction changed past b.
func (c *cursor) dirtyNext(b bound, fwd bool) []byte {
	ks := c.b.o.dirtyKeys()
	if len(ks) == 0 {
		return nil
	}
	if fwd {
		i := 0
		if !b.none {
			i, _ = slices.BinarySearch(ks, string(b.key))
		}
		for ; i < len(ks); i++ {
			if beyond([]byte(ks[i]), b, true) {
				return []byte(ks[i])
			}
		}
		return nil
	}
	i := len(ks) - 1
	if !b.none {
		j, found := slices.BinarySearch(ks, string(b.key))
		i = j - 1
		if found && b.incl {
			i = j
		}
	}
	if i >= 0 {
		return []byte(ks[i])
	}
	return nil
}

// dbNext returns the first database row past b, from the chunk when it
// covers b, else from a new read.
func (c *cursor) dbNext(b bound, fwd bool) ([]byte, []byte) {
	ch := &c.db
	if ch.valid && ch.fwd == fwd && covers(ch.from, b, fwd) {
		i := sort.Search(len(ch.keys), func(i int) bool { return beyond(ch.keys[i], b, fwd) })
		if i < len(ch.keys) {
			return ch.keys[i], ch.vals[i]
		}
		if !ch.more {
			return nil, nil
		}
	}
	c.read(b, fwd)
	if len(ch.keys) == 0 {
		return nil, nil
	}
	return ch.keys[0], ch.vals[0]
}

// covers reports whether every row past b is past from as well.
func covers(from, b bound, fwd bool) bool {
	switch {
	case from.none:
		return true
	case b.none:
		return false
	case bytes.Equal(from.key, b.key):
		return from.incl || !b.incl
	default:
		return before(from.key, b.key, fwd)
	}
}

// read fills the chunk with rows past b.
func (c *cursor) read(b bound, fwd bool) {
	sql, args, ok := c.query(b, fwd)
	if !ok {
		return
	}
	c.b.t.rows(sql, args, c.scan)
	c.done()
}

// done completes the chunk a read filled: whether rows may follow, and
// its rows in order where the statement did not promise it (see
// joinSQL).
func (c *cursor) done() {
	c.db.more = len(c.db.keys) == c.limit
	if c.joining == nil {
		return
	}
	ks, vs := c.db.keys, c.db.vals
	if slices.IsSortedFunc(ks, bytes.Compare) {
		return
	}
	idx := make([]int, len(ks))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return bytes.Compare(ks[a], ks[b]) })
	sk, sv := make([][]byte, len(ks)), make([][]byte, len(vs))
	for i, j := range idx {
		sk[i], sv[i] = ks[j], vs[j]
	}
	c.db.keys, c.db.vals = sk, sv
}

// query empties the chunk for rows past b, and returns the statement that
// reads them (into the chunk by scan); ok is false when no row can be
// there (or the transaction failed).
func (c *cursor) query(b bound, fwd bool) (sql string, args []any, ok bool) {
	if c.limit == 0 {
		c.limit = firstChunk
		if c.end != nil {
			c.limit = boundedChunk
		}
	} else if c.limit < maxChunk {
		c.limit *= 4
	}
	j := c.join
	c.join, c.joining = nil, nil
	if j != nil && fwd && j.read > 0 {
		c.limit = j.read
	}
	t, tb := c.b.t, c.b.o.t
	c.db = chunk{valid: true, fwd: fwd, from: b}
	if tb.kind == kindSearch {
		ix, ok := t.searchIx(tb)
		if !ok {
			return "", nil, false // no number: no row
		}
		tb.ix = ix
	}
	sql, args, nothing, err := fetchSQL(tb, b, c.end, fwd, c.limit, c.prefix > 0 && tb.kind == kindResources)
	if err != nil {
		t.fail(err)
		return "", nil, false
	}
	if j != nil && fwd && tb.kind == kindSearch && !nothing {
		sql, args = joinSQL(sql, args, j)
		c.joining = j
	}
	return sql, args, !nothing
}

// scan adds a row of the cursor's query to its chunk.
func (c *cursor) scan(r pgx.Rows) error {
	if c.joining != nil {
		return c.scanJoined(r)
	}
	k, v, err := scanRow(c.b.o.t, r)
	if err != nil {
		return err
	}
	c.db.keys = append(c.db.keys, k)
	c.db.vals = append(c.db.vals, c.cut(v))
	return nil
}

// SeekBounded returns, for each i, a cursor over the keys before ends[i]
// (see BoundedCursor) moved by Seek(seeks[i]), with the key and value it
// is on: the first rows of every range are read in one round trip.
func (b *bucket) SeekBounded(seeks, ends [][]byte) ([]backend.Cursor, [][]byte, [][]byte) {
	if b.o.t.kind == kindKV {
		return b.seekBoundedKV(seeks, ends)
	}
	cs := make([]*cursor, len(seeks))
	var qs []query
	var read []*cursor
	for i := range seeks {
		c := &cursor{b: b, end: append([]byte{}, ends[i]...), join: b.join}
		cs[i] = c
		if b.o.noRows() {
			continue
		}
		if sql, args, ok := c.query(bound{key: append([]byte{}, seeks[i]...), incl: true}, true); ok {
			qs = append(qs, query{sql, args, c.scan})
			read = append(read, c)
		}
	}
	b.t.batch(qs)
	for _, c := range read {
		c.done()
	}
	out := make([]backend.Cursor, len(cs))
	ks, vs := make([][]byte, len(cs)), make([][]byte, len(cs))
	for i, c := range cs {
		out[i] = c
		// The chunk covers the seek: the move reads nothing more.
		ks[i], vs[i] = c.Seek(seeks[i])
	}
	return out, ks, vs
}

// scanRow reads a row of fetchSQL as the bucket's key and value.
func scanRow(tb table, r pgx.Rows) (k, v []byte, err error) {
	switch tb.kind {
	case kindKV:
		err = r.Scan(&k, &v)
	case kindResources, kindEntries:
		var id string
		err = r.Scan(&id, &v)
		k = []byte(id)
	case kindVersions:
		var id string
		var ver int64
		err = r.Scan(&id, &ver, &v)
		k = versionKey(id, ver)
	case kindSearch:
		var key, id []byte
		err = r.Scan(&key, &id, &v)
		k = searchKey(key, id)
	case kindChanges:
		var seq int64
		err = r.Scan(&seq, &v)
		k = seqKey(seq)
	}
	if v == nil {
		v = []byte{}
	}
	return k, v, err
}
