package pgdb

import (
	"github.com/jackc/pgx/v5"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// prefetchKV reads the values of the keys of a bucket kept in p2p_kv
// that the transaction has not read yet, in one round trip (see
// Prefetch).
func (b *bucket) prefetchKV(keys [][]byte) {
	t, o := b.t, b.o
	if o.noRows() || t.err != nil {
		return
	}
	var want [][]byte
	for _, k := range keys {
		if _, ok := o.m[string(k)]; !ok && len(k) > 0 {
			want = append(want, k)
		}
	}
	if len(want) < 2 {
		// One key costs a Get the same round trip.
		return
	}
	found := map[string][]byte{}
	t.rows("SELECT key, value FROM p2p_kv WHERE bucket = $1 AND key = ANY($2::bytea[])", []any{o.t.name, want}, func(r pgx.Rows) error {
		var k, v []byte
		if err := r.Scan(&k, &v); err != nil {
			return err
		}
		if v == nil {
			v = []byte{}
		}
		found[string(k)] = v
		return nil
	})
	if t.err != nil {
		return
	}
	for _, k := range want {
		o.m[string(k)] = &entry{v: found[string(k)]}
	}
}

// seekBoundedKV is SeekBounded for a bucket kept in p2p_kv: one
// statement reads the first boundedChunk rows of every range, each
// from its seek and before its end (where a cursor's own read of a
// bucket in p2p_kv reads its rows from the seek on, past the end), so
// that a thousand ranges cost one index scan each, in one statement,
// rather than a thousand statements.
func (b *bucket) seekBoundedKV(seeks, ends [][]byte) ([]backend.Cursor, [][]byte, [][]byte) {
	cs := make([]*cursor, len(seeks))
	los, his := make([][]byte, len(seeks)), make([][]byte, len(seeks))
	for i := range seeks {
		cs[i] = &cursor{b: b, end: append([]byte{}, ends[i]...), limit: boundedChunk}
		cs[i].db = chunk{valid: true, fwd: true, from: bound{key: append([]byte{}, seeks[i]...), incl: true}}
		los[i], his[i] = cs[i].db.from.key, cs[i].end
	}
	if t := b.t; !b.o.noRows() && t.err == nil && len(seeks) > 0 {
		t.rows(`SELECT q.i, k.key, k.value FROM unnest($2::bytea[], $3::bytea[]) WITH ORDINALITY q(lo, hi, i)
CROSS JOIN LATERAL (SELECT key, value FROM p2p_kv WHERE bucket = $1 AND key >= q.lo AND key < q.hi ORDER BY key LIMIT $4) k
ORDER BY q.i, k.key`, []any{b.o.t.name, los, his, boundedChunk}, func(r pgx.Rows) error {
			var i int64
			var k, v []byte
			if err := r.Scan(&i, &k, &v); err != nil {
				return err
			}
			if v == nil {
				v = []byte{}
			}
			ch := &cs[i-1].db
			ch.keys, ch.vals = append(ch.keys, k), append(ch.vals, v)
			return nil
		})
	}
	out := make([]backend.Cursor, len(cs))
	ks, vs := make([][]byte, len(cs)), make([][]byte, len(cs))
	for i, c := range cs {
		c.db.more = len(c.db.keys) == c.limit
		out[i] = c
		// The chunk covers the seek: the move reads nothing more.
		ks[i], vs[i] = c.Seek(seeks[i])
	}
	return out, ks, vs
}
