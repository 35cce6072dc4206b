package auth

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// bucketJTI holds the jti of every client assertion accepted, until the
// assertion expires: SHA-256(iss, jti) -> exp (Unix seconds, 8 bytes).
// Kept in the database, it holds across restarts and for every process
// on the same database.
const bucketJTI = "auth_assertion_jti"

// errReplay is returned by useJTI for a jti already seen for the client.
var errReplay = errs.E("auth.jti", errs.Conflict, "the assertion's jti was already used: each assertion may be used once (SMART App Launch 2, client-confidential-asymmetric, signature verification)")

func jtiKey(iss, jti string) []byte {
	h := sha256.New()
	h.Write([]byte(iss))
	h.Write([]byte{0})
	h.Write([]byte(jti))
	return h.Sum(nil)
}

// useJTI records the jti of an accepted assertion of client iss, valid
// until exp, or returns errReplay when it was recorded before and that
// assertion has not expired. The check and the record are one
// transaction, so two requests with the same assertion cannot both pass.
func useJTI(ctx context.Context, st *store.Store, iss, jti string, exp, now time.Time) error {
	key := jtiKey(iss, jti)
	return st.Write(ctx, func(tx *store.Tx) error {
		kv := tx.KV(bucketJTI)
		if old := kv.Get(key); len(old) == 8 && now.Unix() < int64(binary.BigEndian.Uint64(old)) {
			return errReplay
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], uint64(exp.Unix()))
		return kv.Put(key, v[:])
	})
}

// pruneJTI deletes the records of assertions expired before now; it
// returns how many went.
func pruneJTI(ctx context.Context, st *store.Store, now time.Time) (int, error) {
	var old [][]byte
	err := st.View(ctx, func(tx *store.Tx) error {
		return tx.KV(bucketJTI).Scan(nil, func(k, v []byte) (bool, error) {
			if len(v) != 8 || int64(binary.BigEndian.Uint64(v)) <= now.Unix() {
				old = append(old, k)
			}
			return true, nil
		})
	})
	if err != nil || len(old) == 0 {
		return 0, err
	}
	err = st.Write(ctx, func(tx *store.Tx) error {
		kv := tx.KV(bucketJTI)
		for _, k := range old {
			// Only if still expired: a key is never reused before then,
			// but be exact.
			if v := kv.Get(k); len(v) != 8 || int64(binary.BigEndian.Uint64(v)) <= now.Unix() {
				if err := kv.Delete(k); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return len(old), err
}
