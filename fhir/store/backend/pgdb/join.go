package pgdb

import (
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// currentSQL is the one statement that reads resources' current
// records: for each id the FROM item ids yields (as k.id), of the type
// given by the placeholder typ, the rows (id, rec, entries): rec the
// current record (see currentRec), entries the index entries when
// withEntries (else null); each null for an id without it. Prefetches
// and the reads of a search's index (see joinSQL) use it, so that a
// change of where records live is made here. A resource's record and
// entries are one row, whose entries are not read (nor detoasted) unless
// asked for.
func currentSQL(typ, ids string, withEntries bool) string {
	entries := "NULL::bytea"
	if withEntries {
		entries = "r.entries"
	}
	return "SELECT k.id, CASE WHEN r.head IS NOT NULL THEN " + currentRec + " END, " + entries + " FROM " + ids + `
LEFT JOIN p2p_resources r ON r.type = ` + typ + ` AND r.id = k.id`
}

// ridSQL is the resource id an index row's id column names (see
// backend.Join): 0x01 and 16 bytes the UUID they spell, in lowercase
// hexadecimal with dashes; other bytes as they are, in the escape
// format, which is the bytes themselves for an id of ASCII without a
// backslash (every FHIR id) and, for any other, never fails, naming at
// worst a resource that is not there (whose absence is then what is
// read, rightly).
const ridSQL = `(CASE WHEN length(id) = 17 AND get_byte(id, 0) = 1 THEN encode(substr(id, 2), 'hex')::uuid::text ELSE encode(id, 'escape') END) COLLATE "C"`

// joinSpec is what a read of a search index also reads (see
// backend.Join): into ro (and xo, when not nil) the current records
// (and index entries) of the first ids after after.
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
// the same order (their other columns null), then one row (null, null,
// null, id, rec, entries) per resource of the first j.first ids after
// j.after among them (see currentSQL): a page of search results in the
// round trip of the index entries that name it.
func joinSQL(sql string, args []any, j *joinSpec) (string, []any) {
	n := len(args)
	args = append(args, j.typ, j.after, j.first)
	typ, after, first := fmt.Sprintf("$%d::text", n+1), fmt.Sprintf("$%d::text", n+2), fmt.Sprintf("$%d::int", n+3)
	return `WITH i AS (` + sql + `),
w AS (SELECT DISTINCT ` + ridSQL + ` AS id FROM i WHERE ` + ridSQL + ` > ` + after + ` ORDER BY 1 LIMIT ` + first + `)
SELECT key, id, payload, NULL::text, NULL::bytea, NULL::bytea FROM i
UNION ALL
SELECT NULL, NULL, NULL, c.* FROM (` + currentSQL(typ, "w k", j.xo != nil) + `) c
ORDER BY 4 NULLS FIRST, 1, 2`, args
}

// scanJoined adds a row of the cursor's joined read (see joinSQL): an
// index row to its chunk, a resource's to the transaction's reads, where
// the transaction has not read or written the key already.
func (c *cursor) scanJoined(r pgx.Rows) error {
	var key, id, payload, rec, entries []byte
	var rid *string
	if err := r.Scan(&key, &id, &payload, &rid, &rec, &entries); err != nil {
		return err
	}
	if rid == nil {
		if payload == nil {
			payload = []byte{}
		}
		c.db.keys = append(c.db.keys, searchKey(key, id))
		c.db.vals = append(c.db.vals, c.cut(payload))
		return nil
	}
	j := c.joining
	keep(j.ro, *rid, rec)
	if j.xo != nil {
		keep(j.xo, *rid, entries)
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
