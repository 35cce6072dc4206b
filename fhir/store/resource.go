package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pserver/p2pserver/fhir/fhirjson"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// Tx is a store transaction, read-only from View, read-write from Write.
type Tx struct {
	s        *Store
	btx      backend.Tx
	ctx      context.Context
	writable bool
	after    []func()
	// undo, when set, records this write's changes so that it can be
	// taken back alone (see commit).
	undo *undoLog
	// index holds this write's queued index changes by bucket (see
	// reindex), and flushErr the first failure to make them.
	index    map[indexName][]indexOp
	flushErr error
	// group, when set, collects the index changes of the writes of a
	// commit group that have succeeded, made together at its end.
	group *groupIndex
	// format, when set, is the index format this write's index keys are
	// made in instead of the store's: an upgrade step that indexes
	// resources again writes and removes keys in the form of the format it
	// brings the database to, which later steps then upgrade (see
	// upgradeTo3).
	format int
	// typed holds, in a read-only transaction, the first type buckets (R,
	// X, H) looked up (see typeBucket); ntyped how many.
	typed  [4]typedBucket
	ntyped int
}

// typedBucket is a type's bucket of one kind, as typeBucket keeps it.
type typedBucket struct {
	kind byte
	typ  string
	b    backend.Bucket
}

// typeBucket returns typ's bucket of kind ('R' current versions, 'X'
// index entries, 'H' history), nil when there is none. A read-only
// transaction keeps the buckets it has found: bbolt looks a bucket up from
// the root at every call in a read transaction (it keeps them in writes
// only), which a search did for every candidate it checked and every
// match it served.
func (tx *Tx) typeBucket(kind byte, typ string) backend.Bucket {
	if tx.writable {
		return tx.btx.Bucket(bucketName(string(kind), typ))
	}
	for _, t := range tx.typed[:tx.ntyped] {
		if t.kind == kind && t.typ == typ {
			return t.b
		}
	}
	b := tx.btx.Bucket(bucketName(string(kind), typ))
	if b != nil && tx.ntyped < len(tx.typed) {
		tx.typed[tx.ntyped] = typedBucket{kind, typ, b}
		tx.ntyped++
	}
	return b
}

// keyFormat is the index format the store's indexes are in: before
// format 4 every parameter has an index of its own (see stored), before
// format 5 every id is kept in index keys as text (see indexKey).
func (s *Store) keyFormat() int {
	if s.format != 0 {
		return s.format
	}
	return indexFormatNumber
}

// keyFormat is the index format tx makes index keys in (see Tx.format).
func (tx *Tx) keyFormat() int {
	if tx.format != 0 {
		return tx.format
	}
	return tx.s.keyFormat()
}

// groupIndex is the index changes of the writes of one commit group that
// have succeeded, not yet made: they are made once for the whole group,
// each bucket's sorted by key, so that a page touched by several writes is
// reached once and no change needs an undo record (a write that succeeded
// is never taken back alone).
type groupIndex struct {
	ops map[indexName][]indexOp
}

// add moves the queued index changes of a write that succeeded into g,
// after those of the writes before it.
func (g *groupIndex) add(ops map[indexName][]indexOp) {
	if len(ops) == 0 {
		return
	}
	if g.ops == nil {
		g.ops = make(map[indexName][]indexOp, len(ops))
	}
	for name, l := range ops {
		if have := g.ops[name]; have != nil {
			g.ops[name] = append(have, l...)
		} else {
			// Taken over, not copied: the first write of a bucket (a
			// large transaction's, alone in its group, is the only one).
			// ops is cleared, so the write appends to it no more.
			g.ops[name] = l
		}
	}
	clear(ops)
}

// Context returns the context of the request the transaction serves.
func (tx *Tx) Context() context.Context { return tx.ctx }

// AfterCommit schedules f to run once the transaction has committed (never
// if it does not), before the Write that made it returns. f must not
// block for long, nor wait for a write.
func (tx *Tx) AfterCommit(f func()) { tx.after = append(tx.after, f) }

func bucketName(kind, typ string) []byte { return []byte(kind + ":" + typ) }

// appendBucket reports whether name is one of the store's buckets whose
// new keys mostly sort after the others: the change logs, a type's current
// versions, history and index entries (by id), and its _lastUpdated index.
func appendBucket(name []byte) bool {
	if string(name) == "C" {
		return true
	}
	if len(name) < 2 || name[1] != ':' {
		return false
	}
	switch name[0] {
	case 'R', 'H', 'X', 'C':
		return true
	case 'I':
		return bytes.HasSuffix(name, []byte(":_lastUpdated"))
	}
	return false
}

func (tx *Tx) bucket(name []byte) (backend.Bucket, error) {
	b := tx.btx.Bucket(name)
	if b == nil && tx.writable {
		var err error
		if b, err = tx.btx.CreateBucket(name); err != nil {
			return nil, fmt.Errorf("store: create bucket %s: %w", name, err)
		}
		tx.undo.bucketCreated(name)
	}
	if b != nil && tx.writable && appendBucket(name) {
		// Keys there grow at the end (time-ordered ids, versions,
		// sequences, times): a page split leaves the part before the new
		// keys 90% full, not half, and nothing is inserted there later.
		// The other indexes take keys anywhere, where fuller pages would
		// only split sooner.
		if f, ok := b.(backend.FillPercenter); ok {
			f.SetFillPercent(0.9)
		}
	}
	return b, nil
}

// Read returns the current version of typ/id: NotFound if it never
// existed, Gone (with the deleted version) if its current version is a
// delete.
func (tx *Tx) Read(typ, id string) (*Version, error) {
	v, err := tx.current(typ, id)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, errs.E("store.read", errs.NotFound, fmt.Sprintf("%s/%s is not known", typ, id))
	}
	if v.Deleted {
		return v, errs.E("store.read", errs.Gone, fmt.Sprintf("%s/%s was deleted", typ, id))
	}
	return v, nil
}

// CurrentVersion returns the version number of the current version of
// typ/id and whether it is a deletion, without reading the resource; ok is
// false when typ/id never existed.
func (tx *Tx) CurrentVersion(typ, id string) (vid int64, deleted, ok bool) {
	b := tx.typeBucket('R', typ)
	if b == nil {
		return 0, false, false
	}
	raw := b.Get([]byte(id))
	if len(raw) < 17 {
		return 0, false, false
	}
	return int64(binary.BigEndian.Uint64(raw[1:])), recordDeleted(raw), true
}

// versionRecord returns the record of version vid of typ/id (the
// database's memory), from history or, for the current version, from the
// current record; nil if there is none.
func (tx *Tx) versionRecord(typ, id string, vid int64) []byte {
	if b := tx.typeBucket('H', typ); b != nil {
		if raw := b.Get(historyKey(id, vid)); raw != nil {
			return raw
		}
	}
	if b := tx.typeBucket('R', typ); b != nil {
		if raw := b.Get([]byte(id)); len(raw) >= 17 && recordVersion(raw) == vid {
			return raw
		}
	}
	return nil
}

func (tx *Tx) current(typ, id string) (*Version, error) {
	b := tx.typeBucket('R', typ)
	if b == nil {
		return nil, nil
	}
	raw := b.Get([]byte(id))
	if raw == nil {
		return nil, nil
	}
	return decodeRecord(typ, id, raw, true)
}

// VRead returns version vid of typ/id.
func (tx *Tx) VRead(typ, id string, vid int64) (*Version, error) {
	raw := tx.versionRecord(typ, id, vid)
	if raw == nil {
		return nil, errs.E("store.vread", errs.NotFound, fmt.Sprintf("%s/%s has no version %d", typ, id, vid))
	}
	v, err := decodeRecord(typ, id, raw, true)
	if err != nil {
		return nil, err
	}
	if v.Deleted {
		return v, errs.E("store.vread", errs.Gone, fmt.Sprintf("version %d of %s/%s is a deletion", vid, typ, id))
	}
	return v, nil
}

// Doc is a resource ready to be written: its decoded form (numbers as
// json.Number), from which index entries are taken, and its JSON bytes.
type Doc struct {
	Type string
	ID   string
	Map  map[string]any
	JSON []byte
	// Entries, when set, are the index entries computed ahead of the
	// transaction by Prepare; otherwise Put computes them.
	Entries []search.Entry
	// LastUpdated, when set by Prepare, is the time stamped on the version.
	LastUpdated time.Time
	// Canonical tells that JSON is compact and begins with resourceType,
	// id (ID) and meta, in that order, and that its meta has no versionId
	// or lastUpdated (the form ingestion writes, batch's canonical):
	// its stored form is then made without reading it again. Set clears
	// it.
	Canonical bool
	// stamped is JSON as Put stores it for version 1 (a create) of
	// stampedID, and record its stored form (compressed), both made by
	// Prepare so that the writer need not.
	stamped   []byte
	record    []byte
	stampedID string
	// shed tells that Map holds only what the writer reads of a prepared
	// Doc (see ShedMap): it is decoded from JSON again when more is needed.
	shed bool
}

// ShedMap drops from a prepared Doc's Map every member the store does not
// read when it writes d: it keeps resourceType, id, meta, and the elements
// the index entries of the parameters reading meta read (those restamp
// computes again when the writer stamps d at a later time). A
// transaction's resources wait, prepared, for the writer, and their
// decoded forms are most of the memory they hold: the garbage collector
// marks them again and again while the writer runs.
//
// Call it only when nothing but the store reads d.Map before d is
// written (no validator, no access policy reading it). Set and a Prepare
// again decode JSON first, so they see the whole resource. It reports
// whether Map was replaced: not when d is not prepared, or when the
// parameters reading meta read elements not known ahead.
func (s *Store) ShedMap(d *Doc) bool {
	if d.Entries == nil || d.Map == nil || d.shed {
		return d.shed
	}
	along, known := s.reg.ReadAlong(d.Type, "meta")
	if !known {
		return false
	}
	m := make(map[string]any, len(along)+2)
	for _, k := range append([]string{"resourceType", "id"}, along...) {
		if v, ok := d.Map[k]; ok {
			m[k] = v
		}
	}
	d.Map, d.shed = m, true
	return true
}

// unshed decodes d's Map from its JSON again if ShedMap dropped members,
// keeping the id and meta the Map was given (see prepareAt).
func (d *Doc) unshed() error {
	if !d.shed {
		return nil
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(d.JSON))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return err
	}
	for _, k := range []string{"id", "meta"} {
		if v, ok := d.Map[k]; ok {
			m[k] = v
		}
	}
	d.Map, d.shed = m, false
	return nil
}

// Prepare computes a Doc's index entries and time stamp outside of any
// transaction, so that the work is done in the caller's goroutine rather
// than in the single writer. The Map's id and meta.lastUpdated are set.
func (s *Store) Prepare(d *Doc) { s.prepareAt(d, s.now()) }

// PrepareAt is Prepare with the time stamp at (to the microsecond, as
// stored) instead of the time of the call: the resources of one
// transaction are prepared at one time, so that they are written with one
// lastUpdated. The writer never stamps a version before one it has
// written already: a Doc prepared at a time before it is stamped again,
// at that version's time, when written.
func (s *Store) PrepareAt(d *Doc, at time.Time) {
	s.prepareAt(d, at.UTC().Truncate(time.Microsecond))
}

// stamp returns d's JSON as stored for version at lastUpdated (see the
// function stamp).
func (d *Doc) stamp(version int64, lastUpdated time.Time) ([]byte, error) {
	if d.Canonical {
		if b := stampCanonical(d.JSON, d.Type, d.ID, version, lastUpdated); b != nil {
			return b, nil
		}
	}
	return stamp(d.JSON, d.Type, d.ID, version, lastUpdated)
}

// prepareAt is Prepare with the time stamp at.
func (s *Store) prepareAt(d *Doc, at time.Time) {
	_ = d.unshed() // JSON the store decoded before
	d.LastUpdated = at
	d.Map["id"] = d.ID
	meta, _ := d.Map["meta"].(map[string]any)
	if meta == nil {
		meta = map[string]any{}
		d.Map["meta"] = meta
	}
	meta["lastUpdated"] = d.LastUpdated.Format(time.RFC3339Nano)
	d.Entries = s.reg.Extract(d.Type, d.Map)
	if d.Entries == nil {
		d.Entries = []search.Entry{} // prepared, with no entries
	}
	// Most writes are creates: their stored form is made here. An
	// update (or a failure here) stamps in Put instead.
	d.stamped, _ = d.stamp(1, d.LastUpdated)
	d.stampedID = d.ID
	d.record = nil
	if d.stamped != nil {
		d.record = encodeRecord(&Version{Type: d.Type, ID: d.ID, VersionID: 1, LastUpdated: d.LastUpdated, JSON: d.stamped})
	}
}

// restamp moves a prepared Doc to the time at, as prepareAt would, but
// keeps what does not depend on the time: only the head of the stored JSON
// (recordHead), the record's lastUpdated and the index entries of the
// parameters that read meta change, and the compressed JSON Prepare made
// is kept. The writer restamps every version prepared before one it has
// written since (see writtenAt), a large transaction's thousands included.
func (s *Store) restamp(d *Doc, at time.Time) {
	old := recordHead(nil, d.Type, d.ID, 1, d.LastUpdated)
	meta, _ := d.Map["meta"].(map[string]any)
	if meta == nil || d.stamped == nil || len(d.record) < recordFixed || d.record[0]&flagHead == 0 ||
		d.stampedID != d.ID || !bytes.HasPrefix(d.stamped, old) || d.Entries == nil {
		s.prepareAt(d, at)
		return
	}
	d.LastUpdated = at
	meta["lastUpdated"] = at.Format(time.RFC3339Nano)
	stamped := recordHead(make([]byte, 0, len(d.stamped)), d.Type, d.ID, 1, at)
	d.stamped = append(stamped, d.stamped[len(old):]...)
	// A new record, not the old one changed: a value put stays the
	// database's until the commit.
	rec := bytes.Clone(d.record)
	binary.BigEndian.PutUint64(rec[9:], uint64(at.UnixMicro()))
	d.record = rec
	fresh, codes := s.reg.ExtractReading(d.Type, "meta", d.Map)
	entries := make([]search.Entry, 0, len(d.Entries))
	for _, e := range d.Entries {
		if !codes[e.Param] {
			entries = append(entries, e)
		}
	}
	d.Entries = append(entries, fresh...)
}

// PutOptions qualify a Put.
type PutOptions struct {
	// IfMatch, when non-zero, is the version the current one must be.
	IfMatch int64
	// CreateOnly fails with Conflict when the resource already exists.
	CreateOnly bool
}

// Put writes a new version of d (creating the resource if it does not
// exist or was deleted) with its index entries, history and change log
// entry, and runs the hooks. It returns the version written.
func (tx *Tx) Put(d *Doc, opts PutOptions) (*Version, error) {
	if !tx.writable {
		return nil, errs.E("store.put", errs.Internal, "write in a read-only transaction")
	}
	if d.Entries == nil || d.LastUpdated.IsZero() {
		tx.s.Prepare(d)
	}
	prev, err := tx.current(d.Type, d.ID)
	if err != nil {
		return nil, err
	}
	if at := tx.s.writtenAt(d.LastUpdated, prev); !at.Equal(d.LastUpdated) {
		// Prepared before a version written since: stamped again, at
		// that version's time (or just after the version it follows),
		// with its _lastUpdated index entry.
		tx.s.restamp(d, at)
	}
	var next int64 = 1
	if prev != nil {
		next = prev.VersionID + 1
		if opts.CreateOnly && !prev.Deleted {
			return nil, errs.E("store.put", errs.Conflict, fmt.Sprintf("%s/%s already exists", d.Type, d.ID))
		}
	}
	if opts.IfMatch != 0 && (prev == nil || prev.VersionID != opts.IfMatch) {
		have := "none"
		if prev != nil {
			have = fmt.Sprint(prev.VersionID)
		}
		return nil, errs.E("store.put", errs.Precondition,
			fmt.Sprintf("%s/%s is at version %s, not %d", d.Type, d.ID, have, opts.IfMatch))
	}
	body, rec := d.stamped, d.record
	if next != 1 || body == nil || rec == nil || d.stampedID != d.ID {
		var err error
		if body, err = d.stamp(next, d.LastUpdated); err != nil {
			return nil, errs.E("store.put", errs.Invalid, "the resource is not a JSON object", err)
		}
		rec = nil
	}
	v := &Version{Type: d.Type, ID: d.ID, VersionID: next, LastUpdated: d.LastUpdated, JSON: body}
	if rec == nil {
		rec = encodeRecord(v)
	}
	if err := tx.writeVersion(v, rec, d.Entries); err != nil {
		return nil, err
	}
	op := OpCreate
	if prev != nil && !prev.Deleted {
		op = OpUpdate
	}
	if prev != nil && prev.Deleted {
		prev = nil
	}
	return v, tx.runHooks(Event{Op: op, Version: v, Previous: prev, Entries: d.Entries})
}

// Delete marks typ/id deleted (a new version with no content) and removes
// its index entries. Deleting what does not exist or is already deleted
// succeeds and returns nil, as FHIR's delete is idempotent.
func (tx *Tx) Delete(typ, id string, ifMatch int64) (*Version, error) {
	prev, err := tx.current(typ, id)
	if err != nil {
		return nil, err
	}
	if prev == nil || prev.Deleted {
		if ifMatch != 0 {
			return nil, errs.E("store.delete", errs.Precondition, fmt.Sprintf("%s/%s does not exist", typ, id))
		}
		return nil, nil
	}
	if ifMatch != 0 && prev.VersionID != ifMatch {
		return nil, errs.E("store.delete", errs.Precondition,
			fmt.Sprintf("%s/%s is at version %d, not %d", typ, id, prev.VersionID, ifMatch))
	}
	v := &Version{Type: typ, ID: id, VersionID: prev.VersionID + 1, LastUpdated: tx.s.writtenAt(tx.s.now(), prev), Deleted: true}
	if err := tx.writeVersion(v, encodeRecord(v), nil); err != nil {
		return nil, err
	}
	return v, tx.runHooks(Event{Op: OpDelete, Version: v, Previous: prev})
}

func (tx *Tx) runHooks(ev Event) error {
	for _, h := range tx.s.hookList() {
		if err := h(tx, ev); err != nil {
			return err
		}
	}
	return nil
}

// writeVersion stores v (rec, its record) as current, moves the version
// it replaces into history, logs the change, and replaces the resource's
// index entries with entries.
//
// Each version is kept once: the current one in "R", the others in "H"
// (databases written before this also hold the current one in "H"; reads
// take it from either).
func (tx *Tx) writeVersion(v *Version, rec []byte, entries []search.Entry) error {
	cur, err := tx.bucket(bucketName("R", v.Type))
	if err != nil {
		return err
	}
	old := cur.Get([]byte(v.ID))
	if len(old) >= 17 {
		hist, err := tx.bucket(bucketName("H", v.Type))
		if err != nil {
			return err
		}
		// Cloned: a value put must stay valid until the commit, and the
		// database's memory may be mapped again before it.
		if err := tx.put(hist, bucketName("H", v.Type), historyKey(v.ID, recordVersion(old)), bytes.Clone(old)); err != nil {
			return fmt.Errorf("store: history %s/%s: %w", v.Type, v.ID, err)
		}
	}
	if err := tx.putOver(cur, bucketName("R", v.Type), []byte(v.ID), old, rec); err != nil {
		return fmt.Errorf("store: put %s/%s: %w", v.Type, v.ID, err)
	}
	if err := tx.logChange(v); err != nil {
		return err
	}
	return tx.reindex(v.Type, v.ID, entries)
}

func (tx *Tx) logChange(v *Version) error {
	global, err := tx.bucket([]byte("C"))
	if err != nil {
		return err
	}
	seq, err := tx.nextSequence(global, []byte("C"))
	if err != nil {
		return err
	}
	perType, err := tx.bucket(bucketName("C", v.Type))
	if err != nil {
		return err
	}
	// The sequence is new: no key holds it (a failed write that took it
	// gave it back with its keys).
	if err := tx.putOver(global, []byte("C"), seqKey(seq), nil, changeValue(v.Type, v.ID, v.VersionID)); err != nil {
		return err
	}
	return tx.putOver(perType, bucketName("C", v.Type), seqKey(seq), nil, changeValue("", v.ID, v.VersionID))
}

// reindex replaces the index entries of typ/id, touching only those that
// changed. The changes to the index buckets are queued and made, sorted
// by key, when the commit group ends (those of every write of the group
// that succeeded, at once) or when something reads an index (flushIndex):
// a transaction of thousands of resources otherwise inserts its keys at
// random places of the same few B-tree nodes, which bbolt does by moving
// every later key each time.
func (tx *Tx) reindex(typ, id string, entries []search.Entry) error {
	rev, err := tx.bucket(bucketName("X", typ))
	if err != nil {
		return err
	}
	// The _id entries are not stored (the id is the record's key): they
	// are skipped here rather than the entries copied without them.
	raw := rev.Get([]byte(id))
	old := tx.storedEntriesOf(raw)
	stored := 0
	if len(old) == 0 {
		for _, e := range entries {
			if e.Param != "_id" {
				stored++
				tx.queueIndex(typ, e.Param, tx.indexOp(e.Key, id, e.Payload, false))
			}
		}
	} else {
		stored = tx.reindexChanged(typ, id, old, entries)
	}
	if stored == 0 {
		return tx.del(rev, bucketName("X", typ), []byte(id))
	}
	packed, err := tx.encodeEntries(entries)
	if err != nil {
		return err
	}
	return tx.putOver(rev, bucketName("X", typ), []byte(id), raw, packed)
}

// reindexChanged queues the changes from the old index entries of typ/id
// to the new ones (their _id entries aside), and returns how many new
// ones there are.
func (tx *Tx) reindexChanged(typ, id string, old, entries []search.Entry) int {
	keep := make(map[string]bool, len(entries))
	for _, e := range entries {
		if e.Param != "_id" {
			keep[e.Param+"\x00"+e.Key+"\x00"+string(e.Payload)] = true
		}
	}
	had := make(map[string]bool, len(old))
	for _, e := range old {
		k := e.Param + "\x00" + e.Key + "\x00" + string(e.Payload)
		had[k] = true
		if keep[k] {
			continue
		}
		tx.queueIndex(typ, e.Param, tx.indexOp(e.Key, id, nil, true))
	}
	for _, e := range entries {
		if e.Param == "_id" || had[e.Param+"\x00"+e.Key+"\x00"+string(e.Payload)] {
			continue
		}
		tx.queueIndex(typ, e.Param, tx.indexOp(e.Key, id, e.Payload, false))
	}
	return len(keep)
}

// indexOp is a queued change to an index bucket: the index key and the
// value put (none for a delete) in one allocation, kept small because a
// large transaction queues a hundred thousand of them.
type indexOp struct {
	kv []byte // the key, then the value
	// klen is the key's length; negative (-len) for a delete.
	klen int32
	seq  int32 // the position it was queued at, set by sortIndexOps
}

func (op indexOp) del() bool { return op.klen < 0 }

func (op indexOp) key() []byte {
	if op.klen < 0 {
		return op.kv[:-op.klen]
	}
	return op.kv[:op.klen]
}

// value is what a put sets (never nil: bbolt stores a nil value as an
// empty one too).
func (op indexOp) value() []byte { return op.kv[len(op.key()):] }

// indexName names the index bucket of a type's parameter: a map key that
// takes no allocation per queued change, as its bucket name would.
type indexName struct{ typ, param string }

func (tx *Tx) queueIndex(typ, param string, op indexOp) {
	if !storedIn(tx.keyFormat(), tx.s.reg, typ, param) {
		return // found through its sources' indexes (see indexSources)
	}
	if tx.index == nil {
		tx.index = map[indexName][]indexOp{}
	}
	name := indexName{typ, param}
	ops := tx.index[name]
	if len(ops) == cap(ops) {
		// Doubled, where append grows a long slice by a quarter: a
		// large transaction's buckets get tens of thousands of
		// changes, copied four times over at a quarter.
		ops = slices.Grow(ops, max(len(ops), 16))
	}
	tx.index[name] = append(ops, op)
}

// flushIndex makes the queued index changes: first those of the group's
// writes that succeeded before this one (without undo records), then this
// write's own.
func (tx *Tx) flushIndex() error {
	if tx.group != nil && len(tx.group.ops) > 0 {
		g := &Tx{s: tx.s, btx: tx.btx, ctx: tx.ctx, writable: true}
		if err := g.applyIndex(tx.group.ops); err != nil {
			return err
		}
	}
	return tx.applyIndex(tx.index)
}

// applyIndex makes the changes of index, each bucket's in key order (the
// changes to one key keep their order), and empties it.
func (tx *Tx) applyIndex(index map[indexName][]indexOp) error {
	if len(index) == 0 {
		return nil
	}
	names := make([]indexName, 0, len(index))
	for name := range index {
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b indexName) int {
		return bytes.Compare(indexBucket(a.typ, a.param), indexBucket(b.typ, b.param))
	})
	sortIndexParallel(index, names)
	for _, n := range names {
		ops := index[n]
		sortIndexOps(ops)
		bname := indexBucket(n.typ, n.param)
		name := string(bname)
		tx.tuneFill(bname, ops)
		for _, op := range ops {
			if op.del() {
				if b := tx.btx.Bucket(bname); b != nil {
					if err := tx.del(b, bname, op.key()); err != nil {
						return err
					}
				}
				continue
			}
			b, err := tx.bucket(bname)
			if err != nil {
				return err
			}
			if err := tx.put(b, bname, op.key(), op.value()); err != nil {
				return fmt.Errorf("store: index %s: %w", name, err)
			}
		}
	}
	clear(index)
	return nil
}

// longRun is the number of index keys of one value (a page's worth)
// beyond which new keys of that value go at the end of a run longer than
// a page.
const longRun = 64

// tuneFill chooses how full the pages of index bucket name are left when
// they split in this transaction. Under one value, ids grow (they are
// time-ordered), so a key goes at the end of its value's run: when runs
// are longer than a page (a code that many resources have), the page
// before the new key is never written again, and is best left 90% full;
// when runs are short (a reference to one member, a date), keys go
// anywhere, and pages split in half. The first key put decides, from the
// length of the run before it.
func (tx *Tx) tuneFill(name []byte, ops []indexOp) {
	i := slices.IndexFunc(ops, func(op indexOp) bool { return !op.del() })
	if i < 0 {
		return
	}
	b := tx.btx.Bucket(name)
	if b == nil {
		return
	}
	f, ok := b.(backend.FillPercenter)
	if !ok {
		return
	}
	key := ops[i].key()
	value, _, _ := bytes.Cut(key, []byte{0})
	prefix := append(slices.Clip(value), 0)
	c := b.Cursor()
	k, _ := c.Seek(key)
	if k == nil {
		k, _ = c.Last()
	} else {
		k, _ = c.Prev()
	}
	n := 0
	for ; n < longRun && k != nil && bytes.HasPrefix(k, prefix); n++ {
		k, _ = c.Prev()
	}
	if n >= longRun {
		f.SetFillPercent(0.9)
	} else if !appendBucket(name) {
		f.SetFillPercent(0.5)
	}
}

// parallelSortOps is the number of queued index changes (those of a large
// transaction) from which applyIndex sorts the buckets' changes on every
// core before making them, rather than one bucket after the other in the
// single writer.
const parallelSortOps = 8192

// sortIndexParallel sorts the changes of each bucket of index (see
// sortIndexOps), the buckets spread over the cores, when there are many.
func sortIndexParallel(index map[indexName][]indexOp, names []indexName) {
	total := 0
	for _, ops := range index {
		total += len(ops)
	}
	workers := min(runtime.GOMAXPROCS(0), len(names))
	if total < parallelSortOps || workers < 2 {
		return // sorted one at a time as they are made
	}
	// The largest first, so that no core is left with a large one last.
	order := slices.Clone(names)
	slices.SortFunc(order, func(a, b indexName) int { return len(index[b]) - len(index[a]) })
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(order) {
					return
				}
				sortIndexOps(index[order[i]])
			}
		}()
	}
	wg.Wait()
}

// sortIndexOps sorts ops by key, the changes to one key in the order they
// were queued. It is an unstable sort with the position as the tie-break:
// a stable sort of the 100,000 changes of a large transaction takes
// several times as long.
func sortIndexOps(ops []indexOp) {
	if slices.IsSortedFunc(ops, func(a, b indexOp) int { return bytes.Compare(a.key(), b.key()) }) {
		return // appended in order already (keys that grow, a single write)
	}
	for i := range ops {
		ops[i].seq = int32(i)
	}
	slices.SortFunc(ops, func(a, b indexOp) int {
		if c := bytes.Compare(a.key(), b.key()); c != 0 {
			return c
		}
		return int(a.seq - b.seq)
	})
}

// indexReady flushes the queued index changes before an index is read;
// a failure fails the write (see commit).
func (tx *Tx) indexReady() {
	if err := tx.flushIndex(); err != nil && tx.flushErr == nil {
		tx.flushErr = err
	}
}

// stored reports whether typ's parameter param has an index of its own:
// all but those whose entries are all in other parameters' indexes (see
// search.Source).
func (s *Store) stored(typ, param string) bool {
	return storedIn(s.keyFormat(), s.reg, typ, param)
}

// storedIn reports whether typ's parameter param has an index of its own
// in index format: every parameter before format 4.
func storedIn(format int, reg *search.Registry, typ, param string) bool {
	if format < 4 {
		return true
	}
	p, ok := reg.Lookup(typ, param)
	return !ok || p.Stored()
}

// indexSources returns the parameters whose indexes a clause on typ's
// param scans: param itself when it is stored, else its sources.
func (s *Store) indexSources(typ, param string) []search.Source {
	if p, ok := s.reg.Lookup(typ, param); ok && !p.Stored() && s.keyFormat() >= 4 {
		return p.Sources
	}
	return []search.Source{{Code: param}}
}

func indexBucket(typ, param string) []byte { return []byte("I:" + typ + ":" + param) }

// indexKey is the index key of entry key for id: the entry key, 0x00, and
// the id in its index form (see appendIndexID).
func (tx *Tx) indexKey(key, id string) []byte { return tx.indexOp(key, id, nil, true).key() }

// indexOp is the change of the index key of entry key for id (see
// indexKey): a put of payload, or a delete.
func (tx *Tx) indexOp(key, id string, payload []byte, del bool) indexOp {
	k := make([]byte, 0, len(key)+1+len(id)+len(payload))
	k = append(k, key...)
	k = append(k, 0)
	if tx.keyFormat() < 5 {
		k = append(k, id...)
	} else {
		k = appendIndexID(k, id)
	}
	if del {
		return indexOp{kv: k, klen: -int32(len(k))}
	}
	n := len(k)
	return indexOp{kv: append(k, payload...), klen: int32(n)}
}

// splitIndexKey splits a stored index key into entry key and id.
func splitIndexKey(k []byte) (key, id string) {
	i := bytes.IndexByte(k, 0)
	if i < 0 {
		return string(k), ""
	}
	return string(k[:i]), indexID(k[i+1:])
}

// binaryID starts the 16-byte form of an id in an index key. An id that
// is a UUID in lowercase hexadecimal with dashes (the ids the server gives)
// is kept in index keys as binaryID and its 16 bytes; any other id as it
// is. FHIR ids are [A-Za-z0-9\-.]{1,64}, so no id as it is starts with
// this byte. Under one entry key the ids in 16 bytes come first, in id
// order (the bytes sort as the lowercase hexadecimal does), then the ids
// as they are, in id order.
const binaryID = 0x01

// appendIndexID appends the index form of id to k.
func appendIndexID(k []byte, id string) []byte {
	u, ok := uuidBytes(id)
	if !ok {
		return append(k, id...)
	}
	k = append(k, binaryID)
	return append(k, u[:]...)
}

// indexID returns the id whose index form is b (see appendIndexID).
func indexID(b []byte) string {
	if len(b) != 17 || b[0] != binaryID {
		return string(b)
	}
	return uuidString(b[1:])
}

// EntriesOf returns the index entries typ/id has now.
func (tx *Tx) EntriesOf(typ, id string) []search.Entry {
	b := tx.typeBucket('X', typ)
	if b == nil {
		return nil
	}
	return tx.decodeEntriesOf(b.Get([]byte(id)), nil, nil, id)
}

// Set sets the top-level element key of the resource to v (nil removes
// it), in both its decoded form and its JSON, keeping the other members and
// their order as they are. The index entries are recomputed at write.
func (d *Doc) Set(key string, v any) error {
	if err := d.unshed(); err != nil {
		return fmt.Errorf("store: set %s: %w", key, err)
	}
	ms, err := fhirjson.Members(d.JSON)
	if err != nil {
		return fmt.Errorf("store: set %s: %w", key, err)
	}
	var raw []byte
	if v != nil {
		if raw, err = json.Marshal(v); err != nil {
			return fmt.Errorf("store: set %s: %w", key, err)
		}
	}
	out := ms[:0]
	found := false
	for _, m := range ms {
		if m.Key == key {
			found = true
			if v == nil {
				continue
			}
			m.Raw = raw
		}
		out = append(out, m)
	}
	if !found && v != nil {
		out = append(out, fhirjson.Member{Key: key, Raw: raw})
	}
	if d.JSON, err = fhirjson.Object(out); err != nil {
		return err
	}
	d.Canonical = false
	d.stamped = nil
	if v == nil {
		delete(d.Map, key)
	} else {
		// Keep the decoded form as the JSON decoder would give it.
		var dv any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&dv); err != nil {
			return err
		}
		d.Map[key] = dv
	}
	d.Entries = nil
	return nil
}
