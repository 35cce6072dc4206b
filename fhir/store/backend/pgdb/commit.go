package pgdb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/jackc/pgx/v5"
)

var (
	errReadOnly = errors.New("write in a read-only transaction")
	errEmptyKey = errors.New("empty key")
)

// headLen is the length of a record's head: flags, version and
// lastUpdated (see the store's record.go); the JSON follows.
const headLen = 17

// commit sends the transaction's changes and COMMIT in one round trip:
// per table, one statement for its deletions and one for its upserts,
// with the rows as arrays (p2p_resources, which holds two buckets: see
// resWrites).
func (t *tx) commit() error {
	var (
		newNames  []string
		dropNames []string
		seqNames  []string
		seqs      []int64
		kvB       []string
		kvK, kvV  [][]byte
		kvDB      []string
		kvDK      [][]byte
		// resources and entries (the rows of p2p_resources), versions,
		// search, changes
		rows         = map[resKey]*resRow{}
		rowKeys      []resKey
		vT, vI       []string
		vV           []int64
		vR           [][]byte
		vdT, vdI     []string
		vdV          []int64
		mT, mI       []string
		mV           []int64
		sX, sdX      []int32
		sK, sPl, sdK [][]byte
		sI, sdI      [][]byte
		cL, cdL      []string
		cS, cdS      []int64
		cV           [][]byte
		cleared      []table
	)
	bad := func(tb table, k []byte) error {
		return fmt.Errorf("bucket %s: key %q is not one of its keys", tb.name, k)
	}
	row := func(typ, id string) *resRow {
		k := resKey{typ, id}
		r := rows[k]
		if r == nil {
			r = &resRow{}
			rows[k] = r
			rowKeys = append(rowKeys, k)
		}
		return r
	}
	// A bucket's row in p2p_buckets is its existence: the rows of the
	// buckets deleted go (made again for those created again), the
	// buckets created get one.
	t.db.mu.Lock()
	for name, o := range t.buckets {
		if o.exists > 0 && (o.created || o.cleared || (len(o.dirty) > 0 || o.seqSet) && !t.db.known[name]) {
			newNames = append(newNames, name)
		}
	}
	t.db.mu.Unlock()
	for name, o := range t.buckets {
		if o.cleared {
			cleared = append(cleared, o.t)
			dropNames = append(dropNames, name)
		}
		if o.exists < 0 {
			continue
		}
		if o.seqSet {
			seqNames, seqs = append(seqNames, name), append(seqs, o.seq)
		}
		tb := o.t
		for _, ks := range o.dirty {
			k := []byte(ks)
			v := o.m[ks].v
			switch tb.kind {
			case kindKV:
				if v == nil {
					kvDB, kvDK = append(kvDB, tb.name), append(kvDK, k)
				} else {
					kvB, kvK, kvV = append(kvB, tb.name), append(kvK, k), append(kvV, v)
				}
			case kindResources:
				if !textOK(k) {
					return bad(tb, k)
				}
				r := row(tb.typ, ks)
				if v == nil {
					r.r = -1
					continue
				}
				ver, head, rec := int64(-1), v, v
				if len(v) >= headLen && binary.BigEndian.Uint64(v[1:]) <= math.MaxInt64 {
					ver, head = int64(binary.BigEndian.Uint64(v[1:])), v[:headLen]
					// The record is the version's, written in this
					// transaction: kept once, in p2p_versions.
					if h := t.buckets["H:"+tb.typ]; h != nil {
						if e := h.m[string(versionKey(ks, ver))]; e != nil && e.dirty && bytes.Equal(e.v, v) {
							rec = nil
						}
					}
				}
				r.r, r.version, r.head, r.rec = 1, ver, head, rec
			case kindVersions:
				id, ver, ok := splitVersionKey(k)
				if !ok {
					return bad(tb, k)
				}
				// A current record kept as this version's must be
				// kept on its own before the version changes.
				if r := t.buckets["R:"+tb.typ]; r == nil || r.m[id] == nil || !r.m[id].dirty {
					mT, mI, mV = append(mT, tb.typ), append(mI, id), append(mV, ver)
				}
				if v == nil {
					vdT, vdI, vdV = append(vdT, tb.typ), append(vdI, id), append(vdV, ver)
				} else {
					vT, vI, vV, vR = append(vT, tb.typ), append(vI, id), append(vV, ver), append(vR, v)
				}
			case kindEntries:
				if !textOK(k) {
					return bad(tb, k)
				}
				r := row(tb.typ, ks)
				if v == nil {
					r.x = -1
				} else {
					r.x, r.entries = 1, v
				}
			case kindSearch:
				key, id, ok := splitSearchKey(k)
				if !ok {
					return bad(tb, k)
				}
				if v == nil {
					ix, ok := t.searchIx(tb)
					if !ok {
						continue // no number: no row to delete
					}
					sdX, sdK, sdI = append(sdX, ix), append(sdK, key), append(sdI, id)
				} else {
					ix, err := t.makeSearchIx(tb)
					if err != nil {
						return fmt.Errorf("database: number the index %s: %w", tb.name, err)
					}
					sX, sK, sI, sPl = append(sX, ix), append(sK, key), append(sI, id), append(sPl, v)
				}
			case kindChanges:
				if len(k) != 8 || k[0] >= 0x80 {
					return bad(tb, k)
				}
				seq := int64(binary.BigEndian.Uint64(k))
				if v == nil {
					cdL, cdS = append(cdL, tb.typ), append(cdS, seq)
				} else {
					cL, cS, cV = append(cL, tb.typ), append(cS, seq), append(cV, v)
				}
			}
		}
	}
	res := splitRows(rows, rowKeys)
	// Index entries and changes are nearly always new keys: they are
	// inserted plainly, which costs PostgreSQL less than an upsert; when
	// one was there already, the flush is taken back to its savepoint
	// and made again with upserts (the write lock is still held).
	build := func(upsert bool) *pgx.Batch {
		b := &pgx.Batch{}
		if !upsert {
			b.Queue("SAVEPOINT flush")
		}
		if len(dropNames) > 0 {
			b.Queue(`DELETE FROM p2p_buckets WHERE name = ANY($1::text[])`, dropNames)
		}
		if len(seqNames) > 0 {
			b.Queue(`INSERT INTO p2p_buckets (name, seq) SELECT * FROM unnest($1::text[], $2::int8[])
	ON CONFLICT (name) DO UPDATE SET seq = excluded.seq`, seqNames, seqs)
		}
		if len(newNames) > 0 {
			b.Queue(`INSERT INTO p2p_buckets (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING`, newNames)
		}
		for _, tb := range cleared {
			switch tb.kind {
			case kindKV:
				b.Queue(`DELETE FROM p2p_kv WHERE bucket = $1`, tb.name)
			case kindResources:
				b.Queue(`DELETE FROM p2p_resources WHERE type = $1 AND entries IS NULL`, tb.typ)
				b.Queue(`UPDATE p2p_resources SET version = NULL, head = NULL, rec = NULL
	WHERE type = $1 AND head IS NOT NULL`, tb.typ)
			case kindVersions:
				b.Queue(`UPDATE p2p_resources r SET rec = v.rec FROM p2p_versions v
	WHERE r.type = $1 AND r.rec IS NULL AND v.type = r.type AND v.id = r.id AND v.version = r.version`, tb.typ)
				b.Queue(`DELETE FROM p2p_versions WHERE type = $1`, tb.typ)
			case kindEntries:
				b.Queue(`DELETE FROM p2p_resources WHERE type = $1 AND head IS NULL`, tb.typ)
				b.Queue(`UPDATE p2p_resources SET entries = NULL WHERE type = $1 AND entries IS NOT NULL`, tb.typ)
			case kindSearch:
				if ix, ok := t.searchIx(tb); ok {
					b.Queue(`DELETE FROM p2p_index WHERE ix = $1`, ix)
				}
			case kindChanges:
				b.Queue(`DELETE FROM p2p_changes WHERE log = $1`, tb.typ)
			}
		}
		if len(kvDB) > 0 {
			b.Queue(`DELETE FROM p2p_kv k USING unnest($1::text[], $2::bytea[]) u(bucket, key)
	WHERE k.bucket = u.bucket AND k.key = u.key`, kvDB, kvDK)
		}
		if len(kvB) > 0 {
			b.Queue(`INSERT INTO p2p_kv (bucket, key, value) SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])
	ON CONFLICT (bucket, key) DO UPDATE SET value = excluded.value`, kvB, kvK, kvV)
		}
		if len(mT) > 0 {
			b.Queue(`UPDATE p2p_resources r SET rec = v.rec FROM unnest($1::text[], $2::text[], $3::int8[]) u(type, id, version), p2p_versions v
	WHERE r.type = u.type AND r.id = u.id AND r.version = u.version AND r.rec IS NULL
	AND v.type = u.type AND v.id = u.id AND v.version = u.version`, mT, mI, mV)
		}
		if len(vdT) > 0 {
			b.Queue(`DELETE FROM p2p_versions v USING unnest($1::text[], $2::text[], $3::int8[]) u(type, id, version)
	WHERE v.type = u.type AND v.id = u.id AND v.version = u.version`, vdT, vdI, vdV)
		}
		if len(vT) > 0 {
			b.Queue(`INSERT INTO p2p_versions (type, id, version, rec) SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::bytea[])
	ON CONFLICT (type, id, version) DO UPDATE SET rec = excluded.rec`, vT, vI, vV, vR)
		}
		res.queue(b)
		if len(sdX) > 0 {
			b.Queue(`DELETE FROM p2p_index s USING unnest($1::int4[], $2::bytea[], $3::bytea[]) u(ix, key, id)
	WHERE s.ix = u.ix AND s.key = u.key AND s.id = u.id`, sdX, sdK, sdI)
		}
		if len(sX) > 0 {
			q := `INSERT INTO p2p_index (ix, key, id, payload) SELECT * FROM unnest($1::int4[], $2::bytea[], $3::bytea[], $4::bytea[])`
			if upsert {
				q += ` ON CONFLICT (ix, key, id) DO UPDATE SET payload = excluded.payload`
			}
			b.Queue(q, sX, sK, sI, sPl)
		}
		if len(cdS) > 0 {
			b.Queue(`DELETE FROM p2p_changes c USING unnest($1::text[], $2::int8[]) u(log, seq)
	WHERE c.log = u.log AND c.seq = u.seq`, cdL, cdS)
		}
		if len(cS) > 0 {
			q := `INSERT INTO p2p_changes (log, seq, value) SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[])`
			if upsert {
				q += ` ON CONFLICT (log, seq) DO UPDATE SET value = excluded.value`
			}
			b.Queue(q, cL, cS, cV)
		}
		b.Queue("COMMIT")
		return b
	}
	err := t.send(build(false))
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23505" {
		t.db.trips.Add(1)
		if _, err = t.conn.Exec(t.ctx, "ROLLBACK TO SAVEPOINT flush"); err == nil {
			err = t.send(build(true))
		}
	}
	if err != nil {
		return fmt.Errorf("database: commit: %w", err)
	}
	t.db.wrote(len(kvB) + len(vT) + res.written() + len(sX) + len(cS))
	if len(t.newParams) > 0 {
		t.db.mu.Lock()
		for n, ix := range t.newParams {
			t.db.params[n] = ix
		}
		t.db.mu.Unlock()
	}
	if len(newNames) > 0 || len(dropNames) > 0 {
		t.db.mu.Lock()
		for _, n := range dropNames {
			delete(t.db.known, n)
		}
		for _, n := range newNames {
			t.db.known[n] = true
		}
		t.db.mu.Unlock()
	}
	return nil
}

// send sends a batch and reads every result, returning the first error.
func (t *tx) send(b *pgx.Batch) error {
	t.db.trips.Add(1)
	br := t.conn.SendBatch(t.ctx, b)
	var err error
	for i := 0; i < b.Len() && err == nil; i++ {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return err
}

// resKey names a row of p2p_resources.
type resKey struct{ typ, id string }

// resRow is what a transaction did to a row of p2p_resources: to its
// R:<type> value (r) and to its X:<type> value (x), each 0 unchanged, 1
// put, -1 deleted.
type resRow struct {
	r, x    int8
	version int64
	head    []byte
	rec     []byte // nil: the version's, in p2p_versions
	entries []byte
}

// resWrites are the rows of p2p_resources a commit writes, as arrays,
// by what it does to them: both values (a resource's create or update,
// which writes its record and its entries: one statement writes both),
// the record alone, the entries alone; a value deleted while the other
// stays (its columns set to null, the row deleted when the other is
// absent too), both deleted.
type resWrites struct {
	// both: head null where the record is deleted, entries null where
	// the entries are.
	bT, bI     []string
	bV         []int64
	bH, bR, bE [][]byte
	rT, rI     []string
	rV         []int64
	rH, rR     [][]byte
	xT, xI     []string
	xE         [][]byte
	rdT, rdI   []string // the record deleted, the entries unchanged
	xdT, xdI   []string // the entries deleted, the record unchanged
	dT, dI     []string // both deleted
}

func splitRows(rows map[resKey]*resRow, keys []resKey) *resWrites {
	w := &resWrites{}
	for _, k := range keys {
		r := rows[k]
		switch {
		case r.r < 0 && r.x < 0:
			w.dT, w.dI = append(w.dT, k.typ), append(w.dI, k.id)
		case r.r != 0 && r.x != 0:
			var head, rec, entries []byte
			if r.r > 0 {
				head, rec = r.head, r.rec
			}
			if r.x > 0 {
				entries = r.entries
			}
			w.bT, w.bI, w.bV = append(w.bT, k.typ), append(w.bI, k.id), append(w.bV, r.version)
			w.bH, w.bR, w.bE = append(w.bH, head), append(w.bR, rec), append(w.bE, entries)
		case r.r > 0:
			w.rT, w.rI, w.rV = append(w.rT, k.typ), append(w.rI, k.id), append(w.rV, r.version)
			w.rH, w.rR = append(w.rH, r.head), append(w.rR, r.rec)
		case r.r < 0:
			w.rdT, w.rdI = append(w.rdT, k.typ), append(w.rdI, k.id)
		case r.x > 0:
			w.xT, w.xI, w.xE = append(w.xT, k.typ), append(w.xI, k.id), append(w.xE, r.entries)
		case r.x < 0:
			w.xdT, w.xdI = append(w.xdT, k.typ), append(w.xdI, k.id)
		}
	}
	return w
}

// written is the number of rows the statements write.
func (w *resWrites) written() int {
	return len(w.bT) + len(w.rT) + len(w.xT) + len(w.rdT) + len(w.xdT) + len(w.dT)
}

// queue adds the statements writing w to b: each row is written once
// (by an upsert of the columns the transaction changed, or a delete).
func (w *resWrites) queue(b *pgx.Batch) {
	if len(w.dT) > 0 {
		b.Queue(`DELETE FROM p2p_resources r USING unnest($1::text[], $2::text[]) u(type, id)
	WHERE r.type = u.type AND r.id = u.id`, w.dT, w.dI)
	}
	if len(w.rdT) > 0 {
		// The rows without entries go, the others lose their record.
		b.Queue(`DELETE FROM p2p_resources r USING unnest($1::text[], $2::text[]) u(type, id)
	WHERE r.type = u.type AND r.id = u.id AND r.entries IS NULL`, w.rdT, w.rdI)
		b.Queue(`UPDATE p2p_resources r SET version = NULL, head = NULL, rec = NULL FROM unnest($1::text[], $2::text[]) u(type, id)
	WHERE r.type = u.type AND r.id = u.id AND r.head IS NOT NULL`, w.rdT, w.rdI)
	}
	if len(w.xdT) > 0 {
		b.Queue(`DELETE FROM p2p_resources r USING unnest($1::text[], $2::text[]) u(type, id)
	WHERE r.type = u.type AND r.id = u.id AND r.head IS NULL`, w.xdT, w.xdI)
		b.Queue(`UPDATE p2p_resources r SET entries = NULL FROM unnest($1::text[], $2::text[]) u(type, id)
	WHERE r.type = u.type AND r.id = u.id AND r.entries IS NOT NULL`, w.xdT, w.xdI)
	}
	if len(w.bT) > 0 {
		b.Queue(`INSERT INTO p2p_resources (version, type, id, head, rec, entries)
	SELECT CASE WHEN u.head IS NOT NULL THEN u.version END, u.type, u.id, u.head, u.rec, u.entries
	FROM unnest($1::text[], $2::text[], $3::int8[], $4::bytea[], $5::bytea[], $6::bytea[]) u(type, id, version, head, rec, entries)
	ON CONFLICT (type, id) DO UPDATE SET version = excluded.version, head = excluded.head, rec = excluded.rec, entries = excluded.entries`,
			w.bT, w.bI, w.bV, w.bH, w.bR, w.bE)
	}
	if len(w.rT) > 0 {
		b.Queue(`INSERT INTO p2p_resources (version, type, id, head, rec)
	SELECT u.version, u.type, u.id, u.head, u.rec FROM unnest($1::text[], $2::text[], $3::int8[], $4::bytea[], $5::bytea[]) u(type, id, version, head, rec)
	ON CONFLICT (type, id) DO UPDATE SET version = excluded.version, head = excluded.head, rec = excluded.rec`, w.rT, w.rI, w.rV, w.rH, w.rR)
	}
	if len(w.xT) > 0 {
		b.Queue(`INSERT INTO p2p_resources (type, id, entries) SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])
	ON CONFLICT (type, id) DO UPDATE SET entries = excluded.entries`, w.xT, w.xI, w.xE)
	}
}
