package store

import (
	"bytes"
	"slices"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// Prefetch reads the current versions of the resources keys names, with
// their index entries, for the reads of them that follow (Read,
// CurrentVersion, EntriesOf, and a Put's read of what it replaces): on a
// backend whose reads are round trips (backend.Prefetcher) in one round
// trip per type rather than one per resource; elsewhere it does nothing.
// A caller that reads many resources it knows beforehand (a page of
// results, an ingested page) calls it first. Keys of resources that do
// not exist are fine: their absence is read too.
func (tx *Tx) Prefetch(keys []Key) {
	if len(keys) < 2 {
		return
	}
	byType := map[string][]string{}
	var types []string
	for _, k := range keys {
		if _, ok := byType[k.Type]; !ok {
			types = append(types, k.Type)
		}
		byType[k.Type] = append(byType[k.Type], k.ID)
	}
	for _, typ := range types {
		if b := tx.typeBucket('R', typ); b != nil {
			tx.prefetch(b, byType[typ])
		}
	}
}

// Prefetch reads the values at keys, for the Gets and Has of them that
// follow: on a backend whose reads are round trips (backend.Prefetcher)
// in one round trip rather than one per key; elsewhere it does nothing.
func (kv KV) Prefetch(keys [][]byte) {
	if len(keys) < 2 {
		return
	}
	p, ok := kv.tx.btx.Bucket(kv.name).(backend.Prefetcher)
	if !ok {
		return
	}
	for len(keys) > 0 {
		n := min(len(keys), prefetchBatch)
		p.Prefetch(keys[:n])
		keys = keys[n:]
	}
}

// ScanPrefixes calls fn, for each prefixes[i] in turn, with i and every
// key that starts with it and its value (copies), in key order, until fn
// returns false (which ends that prefix's keys) or an error (which ends
// the scan). It is a Scan of each prefix that stops at its last key; on a
// backend whose reads are round trips (backend.BoundedSeeker) the first
// keys of every prefix are read in one round trip rather than one per
// prefix.
func (kv KV) ScanPrefixes(prefixes [][]byte, fn func(i int, key, value []byte) (bool, error)) error {
	b := kv.tx.btx.Bucket(kv.name)
	if b == nil || len(prefixes) == 0 {
		return nil
	}
	bs, _ := b.(backend.BoundedSeeker)
	for start := 0; start < len(prefixes); start += prefetchBatch {
		part := prefixes[start:min(len(prefixes), start+prefetchBatch)]
		cs := make([]backend.Cursor, len(part))
		ks, vs := make([][]byte, len(part)), make([][]byte, len(part))
		if bs != nil && len(part) > 1 {
			// Prefixes without an end (empty, or all 0xff) are read
			// by a cursor of their own.
			var idx []int
			var seeks, ends [][]byte
			for i, p := range part {
				if end := prefixEnd(p); end != nil {
					idx, seeks, ends = append(idx, i), append(seeks, p), append(ends, end)
				}
			}
			bcs, bks, bvs := bs.SeekBounded(seeks, ends)
			for j, i := range idx {
				cs[i], ks[i], vs[i] = bcs[j], bks[j], bvs[j]
			}
		}
		for i, p := range part {
			c := cs[i]
			k, v := ks[i], vs[i]
			if c == nil {
				c = b.Cursor()
				k, v = c.Seek(p)
			}
			for ; k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
				more, err := fn(start+i, bytes.Clone(k), bytes.Clone(v))
				if err != nil {
					return err
				}
				if !more {
					break
				}
			}
		}
	}
	return nil
}

// prefixEnd returns the first key after every key that starts with
// prefix, nil when there is none (an empty prefix, or one of 0xff bytes
// only).
func prefixEnd(prefix []byte) []byte {
	end := slices.Clone(prefix)
	for len(end) > 0 {
		if end[len(end)-1] < 0xff {
			end[len(end)-1]++
			return end
		}
		end = end[:len(end)-1]
	}
	return nil
}
