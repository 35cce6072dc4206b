package pgdb

import (
	"fmt"

	"github.com/google/uuid"
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

// ridSQL is the resource id the index row i's id column names (see
// backend.Join): 0x01 and 16 bytes the UUID they spell, in lowercase
// hexadecimal with dashes; other bytes as they are, in the escape
// format, which is the bytes themselves for an id of ASCII without a
// backslash (every FHIR id) and, for any other, never fails, naming at
// worst a resource that is not there (whose absence is then what is
// read, rightly).
const ridSQL = `(CASE WHEN length(i.id) = 17 AND get_byte(i.id, 0) = 1 THEN encode(substr(i.id, 2), 'hex')::uuid::text ELSE encode(i.id, 'escape') END) COLLATE "C"`

// joinSpec is what a read of a search index also reads (see
// backend.Join): into ro (and xo, when not nil) the current records
// (and index entries) of the ids after after of the first first
// entries, which the read reads.
type joinSpec struct {
	typ    string
	ro, xo *obucket
	after  string
	first  int
}

// Join returns the bucket whose cursors' first read forward also reads
// the resources j names, in the same statement (see joinSQL). A bucket
// other than a search index, or a j this database cannot serve, is
// returned as it is.
func (b *bucket) Join(j backend.Join) backend.Bucket {
	rt := tableOf(string(j.Records))
	if b.o.t.kind != kindSearch || rt.kind != kindResources || j.First <= 0 || !textOK(j.After) {
		return b
	}
	js := &joinSpec{typ: rt.typ, ro: b.t.obucket(j.Records), after: string(j.After), first: j.First}
	if j.Entries != nil {
		if xt := tableOf(string(j.Entries)); xt.kind != kindEntries || xt.typ != rt.typ {
			return b
		}
		js.xo = b.t.obucket(j.Entries)
	}
	return &bucket{t: b.t, o: b.o, join: js}
}

// joinSQL turns sql, a forward read of search index rows (key, id,
// payload) with arguments args, into one that returns the same rows in
// the same order, each with the id, current record and entries (see
// currentCols) of the resource it names when that id is after j.after
// and the resource has a row (else nulls): the records of a page of
// search results in the round trip of the index entries that name it.
func joinSQL(sql string, args []any, j *joinSpec) (string, []any) {
	n := len(args)
	args = append(args, j.typ, j.after)
	typ, after := fmt.Sprintf("$%d::text", n+1), fmt.Sprintf("$%d::text", n+2)
	return `SELECT i.key, i.id, i.payload, r.id, ` + currentCols(j.xo != nil) + ` FROM (` + sql + `) i
` + currentJoin(typ, ridSQL, ridSQL+" > "+after) + `
ORDER BY i.key, i.id`, args
}

// scanJoined adds a row of the cursor's joined read (see joinSQL) to its
// chunk, and the resource's record and entries to the transaction's
// reads, where the transaction has not read or written them already.
func (c *cursor) scanJoined(r pgx.Rows) error {
	var key, id, payload, rec, entries []byte
	var rid *string
	if err := r.Scan(&key, &id, &payload, &rid, &rec, &entries); err != nil {
		return err
	}
	if payload == nil {
		payload = []byte{}
	}
	c.db.keys = append(c.db.keys, searchKey(key, id))
	c.db.vals = append(c.db.vals, c.cut(payload))
	j := c.joining
	if rid == nil {
		// No row, or not after j.after: which one ridSQL tells, for an
		// id of its own bytes (see resourceID).
		if id, ok := resourceID(id); ok && id > j.after {
			rid = &id
		}
	}
	if rid != nil {
		keep(j.ro, *rid, rec)
		if j.xo != nil {
			keep(j.xo, *rid, entries)
		}
	}
	return nil
}

// resourceID is ridSQL of the id column id, when it can be told without
// the database: an id in 16 bytes, or one whose bytes the escape format
// keeps as they are (no 0x00, no backslash, none above 0x7f).
func resourceID(id []byte) (string, bool) {
	if len(id) == 17 && id[0] == 1 {
		return uuid.UUID(id[1:]).String(), true
	}
	for _, c := range id {
		if c == 0 || c == '\\' || c >= 0x80 {
			return "", false
		}
	}
	return string(id), true
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
