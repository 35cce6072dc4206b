package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// indexFormat is the version of the index entry encoding. Version 2 gave
// values longer than the key limit a key of their own (clipped value plus
// digest, the whole value as payload); before, they were cut, so they could
// not be found by their full value and an exact search matched a prefix.
// Version 3 has no _id index: _id is answered from the current versions
// (idScan), and the indexes "I:<Type>:_id" are removed. Version 4 has no
// index for a parameter whose entries are all in other parameters' indexes
// (Observation patient in subject's, combo-code in code's and
// component-code's: see search.Source); those indexes are removed.
// Version 5 keeps the ids that are lowercase UUIDs in 16 bytes in index
// keys (see appendIndexID); their keys are written again.
const indexFormat = "5"

// indexFormatNumber is indexFormat as a number: a database of a greater
// format was written by a later version, and Open refuses it.
const indexFormatNumber = 5

// idsProgressKey (in "M") holds how far the upgrade to format 5 has come:
// the index bucket name, 0x00, and the last key done.
var idsProgressKey = []byte("upgrade-ids-at")

// upgradeBatch is the most index keys one transaction of an upgrade
// removes, so that no transaction of it grows with the database (a
// variable for tests).
var upgradeBatch = 10000

var (
	metaBucket     = []byte("M")
	indexFormatKey = []byte("index-format")
)

// upgradeIndexes brings the indexes of a database written by an earlier
// version to indexFormat: the resources that have an entry of the old form
// are indexed again from their current version (before format 3, in one
// transaction), then the indexes of parameters no longer stored are
// removed a batch of keys per transaction (format 4), then the keys whose
// id is a UUID are written again with it in 16 bytes, a batch per
// transaction (format 5). It runs at Open; a process stopped during it
// takes it up again where it stopped at the next Open. On a new database
// it only records the format.
func (s *Store) upgradeIndexes() error {
	if err := s.upgradeTo3(); err != nil {
		return err
	}
	format := ""
	if err := s.db.View(context.Background(), func(btx backend.Tx) error {
		if meta := btx.Bucket(metaBucket); meta != nil {
			format = string(meta.Get(indexFormatKey))
		}
		return nil
	}); err != nil {
		return err
	}
	if format == indexFormat {
		return nil
	}
	if n, err := strconv.Atoi(format); err == nil && n > indexFormatNumber {
		// Written by a later version: its indexes are not ours to
		// rewrite (this version would remove or misread them).
		return fmt.Errorf("store: the database's index format is %s, newer than this version's %s: open it with the version that wrote it or a later one", format, indexFormat)
	}
	if format != "4" {
		if err := s.upgradeTo4(); err != nil {
			return err
		}
	}
	rewritten := 0
	for {
		n, done, err := s.rewriteIDs()
		if err != nil {
			return fmt.Errorf("store: upgrade indexes to format %s: %w", indexFormat, err)
		}
		rewritten += n
		if done {
			break
		}
	}
	if rewritten > 0 {
		s.log.Info("store: index keys rewritten with ids in 16 bytes", "keys", rewritten)
	}
	return nil
}

// rewriteIDs writes again, in one transaction, the index keys among the
// next upgradeBatch whose id is a lowercase UUID kept as text, with the id
// in 16 bytes, and records how far it came (idsProgressKey); done reports
// that every index has been gone through, and then format 5 is recorded.
func (s *Store) rewriteIDs() (n int, done bool, err error) {
	err = s.db.Update(context.Background(), func(btx backend.Tx) error {
		n, done = 0, false
		meta := btx.Bucket(metaBucket)
		at := bytes.Clone(meta.Get(idsProgressKey))
		fromBucket, fromKey, resume := bytes.Cut(at, []byte{0})
		var names [][]byte
		if err := btx.ForEach(func(name []byte, _ backend.Bucket) error {
			if bytes.HasPrefix(name, []byte("I:")) && (!resume || bytes.Compare(name, fromBucket) >= 0) {
				names = append(names, bytes.Clone(name))
			}
			return nil
		}); err != nil {
			return err
		}
		read := 0
		for _, name := range names {
			b := btx.Bucket(name)
			if b == nil {
				continue
			}
			type change struct{ old, new, value []byte }
			var changes []change
			c := b.Cursor()
			var k, v []byte
			if resume && bytes.Equal(name, fromBucket) {
				if k, v = c.Seek(fromKey); k != nil && bytes.Equal(k, fromKey) {
					k, v = c.Next()
				}
			} else {
				k, v = c.First()
			}
			var last []byte
			for ; k != nil && read < upgradeBatch; k, v = c.Next() {
				read++
				last = k
				i := bytes.IndexByte(k, 0)
				if i < 0 {
					continue
				}
				if _, ok := uuidBytes(string(k[i+1:])); !ok {
					continue
				}
				changes = append(changes, change{bytes.Clone(k), appendIndexID(bytes.Clone(k[:i+1]), string(k[i+1:])), bytes.Clone(v)})
			}
			stopped := k != nil
			last = bytes.Clone(last)
			for _, ch := range changes {
				if err := b.Delete(ch.old); err != nil {
					return err
				}
				if err := b.Put(ch.new, ch.value); err != nil {
					return err
				}
			}
			n += len(changes)
			if stopped {
				// Keys left in this index: take up after the last read.
				// The keys written sort before it (ids in 16 bytes come
				// first under a value), so none is read twice.
				return meta.Put(idsProgressKey, append(append(bytes.Clone(name), 0), last...))
			}
			resume = false
		}
		done = true
		if err := meta.Delete(idsProgressKey); err != nil {
			return err
		}
		return meta.Put(indexFormatKey, []byte(indexFormat))
	})
	return n, done, err
}

// upgradeTo4 removes the indexes of the parameters no longer stored, a
// batch of keys per transaction, then records format 4.
func (s *Store) upgradeTo4() error {
	removed := 0
	for {
		n, more, err := s.removeUnstored()
		if err != nil {
			return fmt.Errorf("store: upgrade indexes to format 4: %w", err)
		}
		removed += n
		if !more {
			break
		}
	}
	if removed > 0 {
		s.log.Info("store: indexes of parameters found through others' removed", "keys", removed)
	}
	return s.db.Update(context.Background(), func(btx backend.Tx) error {
		return btx.Bucket(metaBucket).Put(indexFormatKey, []byte("4"))
	})
}

// removeUnstored removes, in one transaction, up to upgradeBatch keys of
// the first index whose parameter is not stored (see Store.stored), and
// removes those such indexes that are empty. more reports whether it
// removed any key.
func (s *Store) removeUnstored() (n int, more bool, err error) {
	err = s.db.Update(context.Background(), func(btx backend.Tx) error {
		n, more = 0, false
		var name []byte
		var empty [][]byte
		err := btx.ForEach(func(b []byte, bucket backend.Bucket) error {
			rest, ok := bytes.CutPrefix(b, []byte("I:"))
			if !ok || name != nil || bucket == nil {
				return nil
			}
			if typ, param, ok := strings.Cut(string(rest), ":"); ok && !s.stored(typ, param) {
				if k, _ := bucket.Cursor().First(); k == nil {
					empty = append(empty, bytes.Clone(b))
				} else {
					name = bytes.Clone(b)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		// An index emptied by an earlier transaction (a backend may go on
		// listing it once empty).
		for _, e := range empty {
			if err := btx.DeleteBucket(e); err != nil {
				return err
			}
		}
		if name == nil {
			return nil
		}
		more = true
		b := btx.Bucket(name)
		var keys [][]byte
		c := b.Cursor()
		for k, _ := c.First(); k != nil && len(keys) < upgradeBatch; k, _ = c.Next() {
			keys = append(keys, bytes.Clone(k))
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(keys)
		return nil
	})
	return n, more, err
}

// upgradeTo3 brings a database of a format before 3 to format 3.
func (s *Store) upgradeTo3() error {
	return s.db.Update(context.Background(), func(btx backend.Tx) error {
		meta, err := btx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		format := string(meta.Get(indexFormatKey))
		if n, err := strconv.Atoi(format); err == nil && n >= 3 {
			return nil
		}
		// The resources are indexed again as format 3 has them (every
		// parameter in its own index, ids as text): the keys removed are
		// found in the form they were written in, and the database is
		// of format 3 when this step is done; steps 4 and 5 go on from
		// there.
		tx := &Tx{s: s, btx: btx, ctx: context.Background(), writable: true, format: 3}
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
		return meta.Put(indexFormatKey, []byte("3"))
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
