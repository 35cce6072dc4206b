package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// indexFormat is the version of the index entry encoding. Version 2 gave
// values longer than the key limit a key of their own (clipped value plus
// digest, the whole value as payload); before, they were cut, so they could
// not be found by their full value and an exact search matched a prefix.
// Version 3 has no _id index: _id is answered from the current versions
// (idScan), and the indexes "I:<Type>:_id" are removed.
const indexFormat = "3"

var (
	metaBucket     = []byte("M")
	indexFormatKey = []byte("index-format")
)

// upgradeIndexes brings the indexes of a database written by an earlier
// version to indexFormat: the resources that have an entry of the old form
// are indexed again from their current version. It runs once, at Open, in
// one transaction; on a new database it only records the format.
func (s *Store) upgradeIndexes() error {
	return s.db.Update(context.Background(), func(btx backend.Tx) error {
		meta, err := btx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		format := string(meta.Get(indexFormatKey))
		if format == indexFormat {
			return nil
		}
		tx := &Tx{s: s, btx: btx, ctx: context.Background(), writable: true}
		if format != "2" {
			if err := s.upgradeClipped(tx); err != nil {
				return err
			}
		}
		var idIndexes [][]byte
		err = btx.ForEach(func(name []byte, _ backend.Bucket) error {
			if bytes.HasPrefix(name, []byte("I:")) && bytes.HasSuffix(name, []byte(":_id")) {
				idIndexes = append(idIndexes, bytes.Clone(name))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, name := range idIndexes {
			if err := btx.DeleteBucket(name); err != nil {
				return fmt.Errorf("store: remove the index %s: %w", name, err)
			}
		}
		if len(idIndexes) > 0 {
			s.log.Info("store: _id indexes removed (answered from the resources)", "indexes", len(idIndexes))
		}
		return meta.Put(indexFormatKey, []byte(indexFormat))
	})
}

// upgradeClipped indexes again the resources that have an entry of the
// form before format 2.
func (s *Store) upgradeClipped(tx *Tx) error {
	btx := tx.btx
	{
		type stale struct{ typ, id string }
		var todo []stale
		err := btx.ForEach(func(name []byte, b backend.Bucket) error {
			typ, ok := bytes.CutPrefix(name, []byte("X:"))
			if !ok {
				return nil
			}
			return b.ForEach(func(id, v []byte) error {
				for _, e := range decodeOldEntries(v, nil, nil) {
					if search.MayBeClipped(e.Key, e.Payload) {
						todo = append(todo, stale{string(typ), string(id)})
						break
					}
				}
				return nil
			})
		})
		if err != nil {
			return err
		}
		for _, r := range todo {
			v, err := tx.current(r.typ, r.id)
			if err != nil {
				return err
			}
			var entries []search.Entry
			if v != nil && !v.Deleted {
				var m map[string]any
				dec := json.NewDecoder(bytes.NewReader(v.JSON))
				dec.UseNumber()
				if err := dec.Decode(&m); err != nil {
					return fmt.Errorf("store: upgrade indexes of %s/%s: %w", r.typ, r.id, err)
				}
				entries = s.reg.Extract(r.typ, m)
			}
			if err := tx.reindex(r.typ, r.id, entries); err != nil {
				return err
			}
		}
		if err := tx.flushIndex(); err != nil {
			return err
		}
		if len(todo) > 0 {
			s.log.Info("store: indexes upgraded", "format", 2, "resources", len(todo))
		}
		return nil
	}
}
