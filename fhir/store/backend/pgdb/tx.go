package pgdb

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// tx is a transaction: the connection, and the buckets it has used with
// what it read (clean entries, a cache valid in its snapshot or under
// the write lock) and wrote (dirty entries, sent at commit).
type tx struct {
	ctx      context.Context
	db       *DB
	conn     *pgxpool.Conn
	writable bool
	begun    bool
	// open: the connection is still in a finished read transaction
	// (see parkTTL), rolled back in the round trip of the first
	// statement.
	open bool
	// seqs, in a write transaction, are the buckets' sequences read
	// under the write lock (absent: 0).
	seqs    map[string]int64
	err     error
	buckets map[string]*obucket
	// params are the numbers of search parameters (see searchIx) this
	// transaction looked up (0: there is none) or made.
	params    map[string]int32
	newParams map[string]int32
	// kvRead, in a write transaction, are the keys of p2p_kv it read
	// from the database, the first hotKeys (see DB.hot).
	kvRead []kvKey
	// journal, while journaling, takes back the changes made since the
	// savepoint, newest last.
	journal    []func()
	journaling bool
}

// Savepoint marks the point RollbackTo takes the transaction back to.
func (t *tx) Savepoint() {
	clear(t.journal)
	t.journal, t.journaling = t.journal[:0], true
}

// RollbackTo takes back the changes made since the savepoint: they are
// only in memory, so nothing is read.
func (t *tx) RollbackTo() error {
	for i := len(t.journal) - 1; i >= 0; i-- {
		t.journal[i]()
	}
	for _, o := range t.buckets {
		o.dirty = o.dirty[:0:0]
		for k, e := range o.m {
			if e.dirty {
				o.dirty = append(o.dirty, k)
			}
		}
		o.sorted = false
	}
	clear(t.journal)
	t.journal = t.journal[:0]
	return t.err
}

// note records how to take back a change to key of o.
func (t *tx) note(o *obucket, key string) {
	if !t.journaling {
		return
	}
	var saved *entry
	if e := o.m[key]; e != nil {
		c := *e
		saved = &c
	}
	t.journal = append(t.journal, func() {
		if saved == nil {
			delete(o.m, key)
		} else {
			o.m[key] = saved
		}
	})
}

// noteSeq records how to take back a change to o's sequence.
func (t *tx) noteSeq(o *obucket) {
	if !t.journaling {
		return
	}
	seq, set := o.seq, o.seqSet
	t.journal = append(t.journal, func() { o.seq, o.seqSet = seq, set })
}

// noteBucket records how to take back a change to the whole of o.
func (t *tx) noteBucket(o *obucket) {
	if !t.journaling {
		return
	}
	saved := *o
	saved.m = make(map[string]*entry, len(o.m))
	for k, e := range o.m {
		c := *e
		saved.m[k] = &c
	}
	t.journal = append(t.journal, func() { *o = saved })
}

func newTx(ctx context.Context, db *DB, conn *pgxpool.Conn, writable bool) *tx {
	return &tx{ctx: ctx, db: db, conn: conn, writable: writable, buckets: map[string]*obucket{}}
}

// obucket is a bucket's state in the transaction.
type obucket struct {
	t       table
	m       map[string]*entry
	dirty   []string // keys of dirty entries, sorted when sorted is set
	sorted  bool
	cleared bool // DeleteBucket: the database's rows are gone
	// fresh: CreateBucket made the bucket where none was, so that the
	// database holds none of its rows and its reads cost no round trip.
	fresh bool
	// exists is whether the bucket exists in the transaction: 0 not
	// known yet, 1 it does, -1 it does not (never created, or deleted).
	exists int8
	// created is set by CreateBucket: the bucket's row in p2p_buckets
	// is made at commit.
	created bool
	seq     int64
	seqRead bool
	seqSet  bool
}

type entry struct {
	v     []byte // nil: absent
	dirty bool
	hot   bool // read in the transaction's first round trip, not used yet (see DB.hot)
}

// noRows reports whether the database holds none of the bucket's rows
// for the transaction: it deleted the bucket, or made it where none was.
func (o *obucket) noRows() bool { return o.cleared || o.fresh }

func (o *obucket) set(key string, v []byte) {
	e := o.m[key]
	if e == nil {
		e = &entry{}
		o.m[key] = e
	}
	if !e.dirty {
		e.dirty = true
		o.dirty = append(o.dirty, key)
		o.sorted = false
	}
	e.v = v
}

// dirtyKeys returns the dirty keys sorted; the slice is not changed
// afterwards (a new one is made when keys are added), so a cursor may
// keep it.
func (o *obucket) dirtyKeys() []string {
	if !o.sorted {
		ks := slices.Clone(o.dirty)
		slices.Sort(ks)
		o.dirty = ks
		o.sorted = true
	}
	return o.dirty
}

// reconnect gives back t's connection, which the database closed before
// t began on it, and takes another from the pool; false, with t failed,
// when none can be had.
func (t *tx) reconnect() bool {
	release(t.conn)
	var err error
	if t.conn, t.open, err = t.db.acquire(t.ctx); err != nil {
		t.conn = nil
		t.fail(err)
		return false
	}
	return true
}

func (t *tx) fail(err error) {
	if t.err == nil {
		t.err = err
	}
}

// rows runs a query, beginning a read transaction in the same round trip
// if none is begun (after rolling back the one the connection was parked
// in), and calls scan for each row. A connection the database had closed
// (see closedBefore) is replaced, and the round trip sent again: nothing
// of the transaction was read yet.
func (t *tx) rows(sql string, args []any, scan func(pgx.Rows) error) {
	if t.err != nil {
		return
	}
	var rows pgx.Rows
	var br pgx.BatchResults
	if !t.begun {
		for attempt := 0; ; attempt++ {
			var err error
			if rows, br, err = t.begin(sql, args); err == nil {
				break
			}
			if !t.db.closedBefore(t.ctx, t.conn, err, attempt) {
				t.fail(err)
				return
			}
			if !t.reconnect() {
				return
			}
		}
	} else {
		var err error
		t.db.trips.Add(1)
		if rows, err = t.conn.Query(t.ctx, sql, args...); err != nil {
			t.fail(err)
			return
		}
	}
	for rows.Next() {
		if err := scan(rows); err != nil {
			t.fail(err)
			break
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		t.fail(err)
	}
	if br != nil {
		if err := br.Close(); err != nil {
			t.fail(err)
		}
	}
}

// query is a statement of a batch, with what reads its rows.
type query struct {
	sql  string
	args []any
	scan func(pgx.Rows) error
}

// batch runs the queries in one round trip (the one that begins the read
// transaction if none is begun, as rows does), calling each one's scan
// for each of its rows.
func (t *tx) batch(qs []query) {
	if t.err != nil || len(qs) == 0 {
		return
	}
	if len(qs) == 1 {
		t.rows(qs[0].sql, qs[0].args, qs[0].scan)
		return
	}
	var br pgx.BatchResults
	for attempt := 0; ; attempt++ {
		b := &pgx.Batch{}
		begin := !t.begun
		if begin {
			if t.open {
				b.Queue("ROLLBACK")
			}
			b.Queue("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
		}
		for _, q := range qs {
			b.Queue(q.sql, q.args...)
		}
		t.db.trips.Add(1)
		br = t.conn.SendBatch(t.ctx, b)
		var err error
		for range b.Len() - len(qs) {
			if _, err = br.Exec(); err != nil {
				break
			}
		}
		if err == nil {
			if begin {
				t.begun, t.open = true, false
			}
			break
		}
		br.Close()
		if !begin || !t.db.closedBefore(t.ctx, t.conn, err, attempt) {
			t.fail(err)
			return
		}
		if !t.reconnect() {
			return
		}
	}
	for _, q := range qs {
		rows, err := br.Query()
		if err != nil {
			t.fail(err)
			break
		}
		for rows.Next() {
			if err := q.scan(rows); err != nil {
				t.fail(err)
				break
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			t.fail(err)
			break
		}
	}
	if err := br.Close(); err != nil {
		t.fail(err)
	}
}

// begin sends the round trip that begins a read transaction with its
// first statement (after rolling back the one the connection was parked
// in), and returns that statement's rows.
func (t *tx) begin(sql string, args []any) (pgx.Rows, pgx.BatchResults, error) {
	b := &pgx.Batch{}
	if t.open {
		b.Queue("ROLLBACK")
	}
	b.Queue("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
	b.Queue(sql, args...)
	t.db.trips.Add(1)
	br := t.conn.SendBatch(t.ctx, b)
	for range b.Len() - 1 {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return nil, nil, err
		}
	}
	rows, err := br.Query()
	if err != nil {
		br.Close()
		return nil, nil, err
	}
	t.begun, t.open = true, false
	return rows, br, nil
}

func (t *tx) obucket(name []byte) *obucket {
	o := t.buckets[string(name)]
	if o == nil {
		o = &obucket{t: tableOf(string(name)), m: map[string]*entry{}}
		t.buckets[string(name)] = o
	}
	return o
}

// Bucket returns the bucket name, nil when it does not exist: a bucket
// exists from its CreateBucket to its DeleteBucket, recorded by its row
// in p2p_buckets. Names seen there are remembered by the DB (a bucket
// is deleted only by the store's upgrade at start, or as part of the
// write that created it), so that a bucket in use costs no round trip.
func (t *tx) Bucket(name []byte) backend.Bucket {
	o := t.obucket(name)
	if !t.exists(o) {
		return nil
	}
	return &bucket{t: t, o: o}
}

// exists reports whether o's bucket exists in the transaction, reading
// its row (and sequence) when neither the transaction nor the DB knows.
// A transaction that has failed answers that it does, so that its
// callers meet empty buckets rather than nil ones until it ends.
//
// A name not found is remembered by the transaction only: another
// process may create the bucket at any moment, and a cache of absent
// names would hide its rows from this one until told. The round trip is
// the one a read of the bucket would have cost had it existed, and it is
// rare: 36 lookups of absent names in 20,000 creates (1,258 commit
// groups), 35 in 37,000 reads and searches (pg_stat_statements during
// p2pload).
func (t *tx) exists(o *obucket) bool {
	if o.exists != 0 {
		return o.exists > 0
	}
	t.db.mu.Lock()
	known := t.db.known[o.t.name]
	t.db.mu.Unlock()
	if known {
		o.exists = 1
		return true
	}
	found := false
	var seq int64
	t.rows("SELECT seq FROM p2p_buckets WHERE name = $1", []any{o.t.name}, func(r pgx.Rows) error {
		found = true
		return r.Scan(&seq)
	})
	if t.err != nil {
		return true
	}
	if !found {
		o.exists = -1
		return false
	}
	o.exists = 1
	if !o.seqRead {
		o.seq, o.seqRead = seq, true
	}
	t.db.mu.Lock()
	t.db.known[o.t.name] = true
	t.db.mu.Unlock()
	return true
}

// errBucketExists and errNoBucket are CreateBucket's and DeleteBucket's
// refusals, and errNoBucket a change to a bucket deleted meanwhile.
var (
	errBucketExists = errors.New("bucket already exists")
	errNoBucket     = errors.New("bucket not found")
)

// CreateBucket creates the bucket name, failing if it exists.
func (t *tx) CreateBucket(name []byte) (backend.Bucket, error) {
	if !t.writable {
		return nil, errReadOnly
	}
	o := t.obucket(name)
	if t.exists(o) {
		if t.err != nil {
			return nil, t.err
		}
		return nil, errBucketExists
	}
	t.noteBucket(o)
	o.exists, o.created = 1, true
	if !o.cleared {
		// Not in p2p_buckets: it holds nothing yet.
		o.seq, o.seqRead = 0, true
		o.fresh = true
	}
	return &bucket{t: t, o: o}, nil
}

// CreateBucketIfNotExists returns the bucket name, created if needed.
func (t *tx) CreateBucketIfNotExists(name []byte) (backend.Bucket, error) {
	if b := t.Bucket(name); b != nil {
		return b, t.err
	}
	return t.CreateBucket(name)
}

// DeleteBucket removes the bucket name, every key of it and its
// sequence, failing if it does not exist.
func (t *tx) DeleteBucket(name []byte) error {
	if !t.writable {
		return errReadOnly
	}
	o := t.obucket(name)
	if !t.exists(o) {
		return errNoBucket
	}
	if t.err != nil {
		return t.err
	}
	t.noteBucket(o)
	clear(o.m)
	o.dirty, o.sorted = nil, true
	o.cleared = true
	o.exists, o.created = -1, false
	o.seq, o.seqRead, o.seqSet = 0, true, false
	return t.err
}

// ForEach calls fn with every bucket that exists, in name order: those
// in p2p_buckets and those the transaction created, less those it
// deleted.
func (t *tx) ForEach(fn func(name []byte, b backend.Bucket) error) error {
	var names []string
	t.rows("SELECT name FROM p2p_buckets ORDER BY name", nil, func(r pgx.Rows) error {
		var n string
		if err := r.Scan(&n); err != nil {
			return err
		}
		if o := t.buckets[n]; o == nil {
			t.obucket([]byte(n)).exists = 1
		} else if o.exists < 0 {
			return nil
		}
		names = append(names, n)
		return nil
	})
	for n, o := range t.buckets {
		if o.created {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	names = slices.Compact(names)
	if t.err != nil {
		return t.err
	}
	for _, n := range names {
		if err := fn([]byte(n), &bucket{t: t, o: t.obucket([]byte(n))}); err != nil {
			return err
		}
	}
	return t.err
}

type bucket struct {
	t *tx
	o *obucket
	// join, of a search index, is what its cursors' first reads read
	// too (see Join).
	join *joinSpec
}

// Get returns the value at key: from the transaction's changes or what
// it read before, else from the database. Reading a resource's current
// version in a write transaction also reads its index entries (the
// store reads them next, to replace them).
func (b *bucket) Get(key []byte) []byte {
	if e, ok := b.o.m[string(key)]; ok {
		if e.hot {
			e.hot = false
			b.t.readKV(b.o.t.name, key)
		}
		return e.v
	}
	t := b.t
	if b.o.noRows() || t.err != nil {
		return nil
	}
	tb := b.o.t
	var v []byte
	found := false
	one := func(r pgx.Rows) error {
		found = true
		return r.Scan(&v)
	}
	switch tb.kind {
	case kindKV:
		t.rows("SELECT value FROM p2p_kv WHERE bucket = $1 AND key = $2", []any{tb.name, key}, one)
		t.readKV(tb.name, key)
	case kindResources:
		if !textOK(key) {
			return nil
		}
		if !t.writable {
			// A read transaction reads a resource's index entries
			// only to search, and those are prefetched with it.
			t.rows(`SELECT `+currentRec+` FROM p2p_resources r
	WHERE r.type = $1 AND r.id = $2 AND r.head IS NOT NULL`, []any{tb.typ, string(key)}, one)
			break
		}
		// The row holds the entries too: read with the record.
		var entries []byte
		t.rows(`SELECT r.head IS NOT NULL, `+currentRec+`, r.entries FROM p2p_resources r
	WHERE r.type = $1 AND r.id = $2`, []any{tb.typ, string(key)}, func(r pgx.Rows) error {
			if err := r.Scan(&found, &v, &entries); err != nil {
				return err
			}
			if !found {
				v = nil
			}
			return nil
		})
		if t.err == nil {
			xo := t.obucket([]byte("X:" + tb.typ))
			if _, ok := xo.m[string(key)]; !ok && !xo.cleared {
				xo.m[string(key)] = &entry{v: entries}
			}
		}
	case kindEntries:
		if !textOK(key) {
			return nil
		}
		t.rows("SELECT entries FROM p2p_resources WHERE type = $1 AND id = $2 AND entries IS NOT NULL", []any{tb.typ, string(key)}, one)
	case kindVersions:
		id, ver, ok := splitVersionKey(key)
		if !ok {
			return nil
		}
		t.rows("SELECT rec FROM p2p_versions WHERE type = $1 AND id = $2 AND version = $3", []any{tb.typ, id, ver}, one)
	case kindSearch:
		k, id, ok := splitSearchKey(key)
		if !ok {
			return nil
		}
		if ix, ok := t.searchIx(tb); ok {
			t.rows("SELECT payload FROM p2p_index WHERE ix = $1 AND key = $2 AND id = $3", []any{ix, k, id}, one)
		}
	case kindChanges:
		if len(key) != 8 || key[0] >= 0x80 {
			return nil
		}
		seq := int64(binary.BigEndian.Uint64(key))
		t.rows("SELECT value FROM p2p_changes WHERE log = $1 AND seq = $2", []any{tb.typ, seq}, one)
	}
	if t.err != nil {
		return nil
	}
	if found && v == nil {
		v = []byte{}
	}
	if !found {
		v = nil
	}
	b.o.m[string(key)] = &entry{v: v}
	return v
}

// readKV notes that a write transaction read key of bucket, from the
// database or from its first round trip (see DB.hot).
func (t *tx) readKV(bucket string, key []byte) {
	if t.kvRead != nil && len(t.kvRead) < hotKeys {
		t.kvRead = append(t.kvRead, kvKey{bucket, string(key)})
	}
}

func (b *bucket) Put(key, value []byte) error {
	if !b.t.writable {
		return errReadOnly
	}
	if b.o.exists < 0 {
		return errNoBucket
	}
	if len(key) == 0 {
		return errEmptyKey
	}
	if value == nil {
		value = []byte{}
	}
	b.t.note(b.o, string(key))
	b.o.set(string(key), bytes.Clone(value))
	return b.t.err
}

func (b *bucket) Delete(key []byte) error {
	if !b.t.writable {
		return errReadOnly
	}
	if b.o.exists < 0 {
		return errNoBucket
	}
	b.t.note(b.o, string(key))
	b.o.set(string(key), nil)
	return b.t.err
}

func (b *bucket) ForEach(fn func(k, v []byte) error) error {
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return b.t.err
}

func (b *bucket) Sequence() uint64 {
	o := b.o
	if !o.seqRead && b.t.seqs != nil {
		o.seq, o.seqRead = b.t.seqs[o.t.name], true
	}
	if !o.seqRead {
		o.seqRead = true
		b.t.rows("SELECT seq FROM p2p_buckets WHERE name = $1", []any{o.t.name}, func(r pgx.Rows) error {
			return r.Scan(&o.seq)
		})
	}
	return uint64(o.seq)
}

func (b *bucket) SetSequence(v uint64) error {
	if !b.t.writable {
		return errReadOnly
	}
	if b.o.exists < 0 {
		return errNoBucket
	}
	b.Sequence()
	b.t.noteSeq(b.o)
	b.o.seq, b.o.seqSet = int64(v), true
	return b.t.err
}

func (b *bucket) NextSequence() (uint64, error) {
	if !b.t.writable {
		return 0, errReadOnly
	}
	if b.o.exists < 0 {
		return 0, errNoBucket
	}
	s := b.Sequence()
	if b.t.err != nil {
		return 0, b.t.err
	}
	b.t.noteSeq(b.o)
	b.o.seq, b.o.seqSet = int64(s+1), true
	return s + 1, nil
}

func (b *bucket) Cursor() backend.Cursor { return &cursor{b: b, join: b.join} }

// BoundedCursor returns a cursor over the keys before end only: of a
// search index, it reads no row past end, and reads boundedChunk rows at
// first rather than firstChunk.
func (b *bucket) BoundedCursor(end []byte) backend.Cursor {
	return &cursor{b: b, end: append([]byte{}, end...), join: b.join} // never nil
}

// PrefixCursor returns a cursor whose values are cut to their first n
// bytes: of a resource bucket, the record's head without its JSON.
func (b *bucket) PrefixCursor(n int) backend.Cursor { return &cursor{b: b, prefix: n} }

// Prefetch reads the values of keys not read yet, in one round trip, for
// the Gets that follow: the current records of resources (with their
// index entries), index entries alone (see PrefetchWith), or the values
// of a bucket kept in p2p_kv.
func (b *bucket) Prefetch(keys [][]byte) {
	if b.o.t.kind == kindKV {
		b.prefetchKV(keys)
		return
	}
	var also []byte
	if b.o.t.kind == kindResources {
		also = []byte("X:" + b.o.t.typ)
	}
	b.prefetch(keys, also, false)
}

// searchIx returns the number of the search index bucket tb in
// p2p_search_params; ok is false when it has none (it holds no row).
func (t *tx) searchIx(tb table) (int32, bool) {
	t.db.mu.Lock()
	ix, ok := t.db.params[tb.name]
	t.db.mu.Unlock()
	if ok {
		return ix, true
	}
	if ix, ok := t.params[tb.name]; ok {
		return ix, ix != 0
	}
	t.rows("SELECT ix FROM p2p_search_params WHERE type = $1 AND param = $2", []any{tb.typ, tb.param}, func(r pgx.Rows) error {
		return r.Scan(&ix)
	})
	if t.err != nil {
		return 0, false
	}
	if ix != 0 {
		t.db.mu.Lock()
		t.db.params[tb.name] = ix
		t.db.mu.Unlock()
		return ix, true
	}
	if t.params == nil {
		t.params = map[string]int32{}
	}
	t.params[tb.name] = 0
	return 0, false
}

// makeSearchIx numbers the search index bucket tb, in the write
// transaction (under the write lock, so numbers are never taken twice).
func (t *tx) makeSearchIx(tb table) (int32, error) {
	if ix, ok := t.searchIx(tb); ok || t.err != nil {
		return ix, t.err
	}
	var ix int32
	t.db.trips.Add(1)
	err := t.conn.QueryRow(t.ctx, `INSERT INTO p2p_search_params (ix, type, param)
SELECT coalesce(max(ix), 0) + 1, $1, $2 FROM p2p_search_params RETURNING ix`, tb.typ, tb.param).Scan(&ix)
	if err != nil {
		return 0, err
	}
	t.params[tb.name] = ix
	if t.newParams == nil {
		t.newParams = map[string]int32{}
	}
	t.newParams[tb.name] = ix
	return ix, nil
}
