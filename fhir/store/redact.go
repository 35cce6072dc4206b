package store

import (
	"fmt"

	"github.com/p2pserver/p2pserver/internal/errs"
)

// Redact replaces the stored JSON of version vid of typ/id, in its history
// and, when vid is the current version, as the current one; the version
// keeps its number and lastUpdated. It is for taking out of stored
// resources secrets they must not keep (their values kept elsewhere,
// encrypted), so it must not change an indexed element: index entries are
// left as they are. A deletion cannot be redacted (it has no JSON).
func (tx *Tx) Redact(typ, id string, vid int64, json []byte) error {
	v, err := tx.VRead(typ, id, vid)
	if err != nil {
		return err
	}
	if len(json) == 0 {
		return errs.E("store.redact", errs.Invalid, "a redacted version needs its JSON")
	}
	v.JSON = json
	rec := encodeRecord(v)
	// A version is in history once it is not the current one (and, in
	// databases written before versions were kept once, the current one
	// too): wherever it is, the new JSON replaces it.
	if hist := tx.typeBucket('H', typ); hist != nil && hist.Get(historyKey(id, vid)) != nil {
		if err := tx.put(hist, bucketName("H", typ), historyKey(id, vid), rec); err != nil {
			return fmt.Errorf("store: redact %s/%s/_history/%d: %w", typ, id, vid, err)
		}
	}
	cur, err := tx.current(typ, id)
	if err != nil || cur == nil || cur.VersionID != vid {
		return err
	}
	b, err := tx.bucket(bucketName("R", typ))
	if err != nil {
		return err
	}
	if err := tx.put(b, bucketName("R", typ), []byte(id), rec); err != nil {
		return fmt.Errorf("store: redact %s/%s: %w", typ, id, err)
	}
	return nil
}
