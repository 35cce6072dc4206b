package pgdb

import (
	"bytes"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// currentCols and currentJoin are the one place that reads resources'
// current records: currentCols the columns (rec, entries) of the
// p2p_resources row r, rec its current record (see currentRec, null
// when the row holds none), entries its index entries when withEntries
// (else null); currentJoin the join that finds r, of the type typ, at
// the id id (SQL expressions), on a further condition cond when not "".
// Prefetches (currentSQL) and a search's joined index reads (joinSQL)
// use them, so that a change of where records live is made here. A
// resource's record and entries are one row, whose entries are not read
// (nor detoasted) unless asked for.
func currentCols(withEntries bool) string {
	entries := "NULL::bytea"
	if withEntries {
		entries = "r.entries"
	}
	return "CASE WHEN r.head IS NOT NULL THEN " + currentRec + " END, " + entries
}

func currentJoin(typ, id, cond string) string {
	if cond != "" {
		cond += " AND "
	}
	return "LEFT JOIN p2p_resources r ON " + cond + "r.type = " + typ + " AND r.id = " + id
}

// currentSQL reads, for each id the FROM item ids yields (as k.id), the
// rows (id, rec, entries) of currentCols: both null for an id without
// a row.
func currentSQL(typ, ids string, withEntries bool) string {
	return "SELECT k.id, " + currentCols(withEntries) + " FROM " + ids + "\n" + currentJoin(typ, "k.id", "")
}

// ridSQL is the resource id the index id column col names (see
// backend.Join): 0x01 and 16 bytes the UUID they spell, in lowercase
// hexadecimal with dashes; other bytes as they are, in the escape
// format, which is the bytes themselves for an id of ASCII without a
// backslash (every FHIR id) and, for any other, never fails, naming at
// worst a resource that is not there (whose absence is then what is
// read, rightly).
func ridSQL(col string) string {
	return `(CASE WHEN length(` + col + `) = 17 AND get_byte(` + col + `, 0) = 1 THEN encode(substr(` + col + `, 2), 'hex')::uuid::text ELSE encode(` + col + `, 'escape') END) COLLATE "C"`
}

// joinSpec is what a read of a search index also reads (see
// backend.Join): a read of read entries (0: as a cursor reads at first),
// and into ro (and xo, when not nil) the current records (and index
// entries) of those of the first first whose ids are after after.
type joinSpec struct {
	typ         string
	ro, xo      *obucket
	after       string
	read, first int
}

// Join returns the bucket whose cursors' first read forward also reads
// the resources j names, in the same statement (see joinSQL). A bucket
// other than a search index, or a j this database cannot serve, is
// returned as it is.
func (b *bucket) Join(j backend.Join) backend.Bucket {
	rt := tableOf(string(j.Records))
	if b.o.t.kind != kindSearch || rt.kind != kindResources || j.First <= 0 || j.Read < 0 || !textOK(j.After) {
		return b
	}
	js := &joinSpec{typ: rt.typ, ro: b.t.obucket(j.Records), after: string(j.After), read: j.Read, first: j.First}
	if j.Entries != nil {
		if xt := tableOf(string(j.Entries)); xt.kind != kindEntries || xt.typ != rt.typ {
			return b
		}
		js.xo = b.t.obucket(j.Entries)
	}
	return &bucket{t: b.t, o: b.o, join: js}
}

// joinSQL turns sql, a forward read of search index rows (key, id,
// payload) with arguments args, into one that returns the same rows, each
// with, of the first j.first, those whose resource id is after j.after,
// that id, the resource's current record and entries (see currentCols;
// null when it has none), else nulls: the records of a page of search
// results in the round trip of the index entries that name it.
// The rows come in the index read's order (the plan is a nested loop over
// it), which is not asked for: a sort of the rows, in the plan, would
// cost more than the cursor's check that they are in order (see
// cursor.done).
func joinSQL(sql string, args []any, j *joinSpec) (string, []any) {
	n := len(args)
	args = append(args, j.typ, j.after, j.first)
	typ, after, first := fmt.Sprintf("$%d::text", n+1), fmt.Sprintf("$%d::text", n+2), fmt.Sprintf("$%d::int", n+3)
	// The rows are numbered in the index read's order, and each row's
	// id worked out once (the window keeps the subquery whole).
	cond := "i.n <= " + first + " AND i.rid > " + after
	return `SELECT i.key, i.id, i.payload, CASE WHEN ` + cond + ` THEN i.rid END, ` + currentCols(j.xo != nil) + `
FROM (SELECT key, id, payload, ` + ridSQL("s.id") + ` AS rid, row_number() OVER () AS n FROM (` + sql + `) s) i
` + currentJoin(typ, "i.rid", cond), args
}

// scanJoined adds a row of the cursor's joined read (see joinSQL) to its
// chunk, and the resource's record and entries to the transaction's
// reads, where the transaction has not read or written them already.
// The row's values are taken as PostgreSQL sent them (bytea in binary,
// text in either format: their bytes), which costs less than scanning
// them.
func (c *cursor) scanJoined(r pgx.Rows) error {
	raw := r.RawValues()
	fds := r.FieldDescriptions()
	if len(raw) != 6 || len(fds) != 6 {
		return fmt.Errorf("a joined index read returned %d columns, want 6", len(raw))
	}
	for i, fd := range fds {
		// The id (text) is its bytes in either format; bytea in text
		// would be hexadecimal.
		if i != 3 && fd.Format != pgx.BinaryFormatCode {
			return fmt.Errorf("a joined index read returned column %d in text", i)
		}
	}
	key, id, payload := raw[0], raw[1], raw[2]
	// The index key and its payload in one allocation.
	kl := len(key) + 1 + len(id)
	buf := make([]byte, 0, kl+len(payload))
	buf = append(append(append(buf, key...), 0), id...)
	buf = append(buf, payload...)
	c.db.keys = append(c.db.keys, buf[:kl:kl])
	c.db.vals = append(c.db.vals, c.cut(buf[kl:]))
	if raw[3] == nil {
		return nil // not one whose resource the read joined
	}
	j, rid := c.joining, string(raw[3])
	keep(j.ro, rid, bytes.Clone(raw[4]))
	if j.xo != nil {
		keep(j.xo, rid, bytes.Clone(raw[5]))
	}
	return nil
}

// keep records v (nil: absent) as what the database holds at key of o,
// unless the transaction read or changed it already.
func keep(o *obucket, key string, v []byte) {
	if _, ok := o.m[key]; !ok && !o.cleared {
		o.m[key] = &entry{v: v}
	}
}

// PrefetchWith reads the values of keys not read yet, in one round
// trip, for the Gets that follow: of a resource bucket the current
// records, with their index entries when also names the type's entries
// bucket; of an entries bucket the index entries. A key read already in
// every bucket asked for is not read again.
func (b *bucket) PrefetchWith(keys [][]byte, also []byte) { b.prefetch(keys, also, true) }

// prefetch is PrefetchWith; unless both is set, a key whose record was
// read is not read again for its entries.
func (b *bucket) prefetch(keys [][]byte, also []byte, both bool) {
	t, o := b.t, b.o
	if (o.t.kind != kindResources && o.t.kind != kindEntries) || o.noRows() || t.err != nil {
		return
	}
	var xo *obucket
	if o.t.kind == kindResources && also != nil {
		if xt := tableOf(string(also)); xt.kind == kindEntries && xt.typ == o.t.typ {
			xo = t.obucket(also)
		}
	}
	var ids []string
	for _, k := range keys {
		if !textOK(k) {
			continue
		}
		_, read := o.m[string(k)]
		if xo != nil && read && both {
			_, read = xo.m[string(k)]
		}
		if !read {
			ids = append(ids, string(k))
		}
	}
	if len(ids) == 0 {
		return
	}
	// One key costs a Get the same round trip, except a resource with
	// its entries in a read transaction, whose Get does not read them.
	if len(ids) == 1 && (xo == nil || t.writable) {
		return
	}
	args := []any{o.t.typ, ids}
	if o.t.kind == kindEntries {
		found := map[string][]byte{}
		t.rows(`SELECT id, entries FROM p2p_resources WHERE type = $1 AND id = ANY($2::text[]) AND entries IS NOT NULL`, args, func(r pgx.Rows) error {
			var id string
			var e []byte
			if err := r.Scan(&id, &e); err != nil {
				return err
			}
			found[id] = e
			return nil
		})
		if t.err == nil {
			for _, id := range ids {
				keep(o, id, found[id])
			}
		}
		return
	}
	t.rows(currentSQL("$1", "unnest($2::text[]) k(id)", xo != nil), args, func(r pgx.Rows) error {
		var id string
		var rec, entries []byte
		if err := r.Scan(&id, &rec, &entries); err != nil {
			return err
		}
		keep(o, id, rec)
		if xo != nil {
			keep(xo, id, entries)
		}
		return nil
	})
}
