package store

import (
	"bytes"
	"fmt"
	"strings"
)

// KV is a key-value bucket that a domain package keeps in the same
// database, written in the same transaction as resources when it is taken
// from a write transaction. Names starting with a capital letter and a
// colon are reserved for resources.
type KV struct {
	tx   *Tx
	name []byte
}

// KV returns the bucket name; in a write transaction it is created if
// needed. In a read transaction a missing bucket reads as empty.
func (tx *Tx) KV(name string) KV {
	return KV{tx: tx, name: []byte(name)}
}

func (kv KV) check() error {
	if len(kv.name) > 1 && kv.name[1] == ':' && strings.ContainsRune("RHXIC", rune(kv.name[0])) {
		return fmt.Errorf("store: bucket name %q is reserved", kv.name)
	}
	return nil
}

// Get returns a copy of the value at key, nil if absent.
func (kv KV) Get(key []byte) []byte {
	b := kv.tx.btx.Bucket(kv.name)
	if b == nil {
		return nil
	}
	return bytes.Clone(b.Get(key))
}

// Has reports whether key is set, without copying its value.
func (kv KV) Has(key []byte) bool {
	b := kv.tx.btx.Bucket(kv.name)
	return b != nil && b.Get(key) != nil
}

// Put sets key to value.
func (kv KV) Put(key, value []byte) error {
	if err := kv.check(); err != nil {
		return err
	}
	b, err := kv.tx.bucket(kv.name)
	if err != nil {
		return err
	}
	return kv.tx.put(b, kv.name, key, value)
}

// Delete removes key.
func (kv KV) Delete(key []byte) error {
	b := kv.tx.btx.Bucket(kv.name)
	if b == nil {
		return nil
	}
	return kv.tx.del(b, kv.name, key)
}

// NextSequence returns a new unique, increasing integer for this bucket.
func (kv KV) NextSequence() (uint64, error) {
	b, err := kv.tx.bucket(kv.name)
	if err != nil {
		return 0, err
	}
	return kv.tx.nextSequence(b, kv.name)
}

// Scan calls fn for each key at or after start, in key order, with copies
// of key and value, until fn returns false or an error.
func (kv KV) Scan(start []byte, fn func(key, value []byte) (bool, error)) error {
	b := kv.tx.btx.Bucket(kv.name)
	if b == nil {
		return nil
	}
	c := b.Cursor()
	for k, v := c.Seek(start); k != nil; k, v = c.Next() {
		more, err := fn(bytes.Clone(k), bytes.Clone(v))
		if err != nil || !more {
			return err
		}
	}
	return nil
}
