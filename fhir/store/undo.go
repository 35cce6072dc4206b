package store

import (
	"bytes"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// undoLog records what one write changed in a shared transaction, so that
// the write can be taken back on its own when it fails: the other writes
// of its commit group keep what they did and are never run again. bbolt
// has no savepoints; every change the store makes goes through the
// methods below, which note the value they replace first.
type undoLog struct {
	ops []undoOp
}

type undoOp struct {
	bucket  []byte
	key     []byte
	old     []byte // nil: the key was absent
	seq     bool   // restore the bucket's sequence to oldSeq
	oldSeq  uint64
	created bool // the bucket was created by this write: remove it
}

// bucketCreated notes that name was created.
func (u *undoLog) bucketCreated(name []byte) {
	if u != nil {
		u.ops = append(u.ops, undoOp{bucket: name, created: true})
	}
}

// put sets key in b (named name), noting the value it replaces.
func (tx *Tx) put(b backend.Bucket, name, key, value []byte) error {
	if tx.undo != nil {
		tx.undo.ops = append(tx.undo.ops, undoOp{bucket: name, key: bytes.Clone(key), old: cloneOrNil(b.Get(key))})
	}
	return b.Put(key, value)
}

// putOver is put for a key whose value the caller has just read: old
// (nil when absent), noted as it is instead of read again.
func (tx *Tx) putOver(b backend.Bucket, name, key, old, value []byte) error {
	if tx.undo != nil {
		tx.undo.ops = append(tx.undo.ops, undoOp{bucket: name, key: bytes.Clone(key), old: cloneOrNil(old)})
	}
	return b.Put(key, value)
}

// del removes key from b (named name), noting the value it had.
func (tx *Tx) del(b backend.Bucket, name, key []byte) error {
	if tx.undo != nil {
		old := b.Get(key)
		if old == nil {
			return nil
		}
		tx.undo.ops = append(tx.undo.ops, undoOp{bucket: name, key: bytes.Clone(key), old: bytes.Clone(old)})
	}
	return b.Delete(key)
}

// nextSequence advances b's sequence, noting the one it had.
func (tx *Tx) nextSequence(b backend.Bucket, name []byte) (uint64, error) {
	if tx.undo != nil {
		tx.undo.ops = append(tx.undo.ops, undoOp{bucket: name, seq: true, oldSeq: b.Sequence()})
	}
	return b.NextSequence()
}

func cloneOrNil(b []byte) []byte {
	if b == nil {
		return nil
	}
	return bytes.Clone(b)
}

// rollback takes back, newest first, every change the write made.
func (u *undoLog) rollback(btx backend.Tx) error {
	for i := len(u.ops) - 1; i >= 0; i-- {
		op := u.ops[i]
		if op.created {
			if err := btx.DeleteBucket(op.bucket); err != nil {
				return err
			}
			continue
		}
		b := btx.Bucket(op.bucket)
		if b == nil {
			continue // created by this write, and removed just above
		}
		var err error
		switch {
		case op.seq:
			err = b.SetSequence(op.oldSeq)
		case op.old == nil:
			err = b.Delete(op.key)
		default:
			err = b.Put(op.key, op.old)
		}
		if err != nil {
			return err
		}
	}
	u.ops = nil
	return nil
}
