package batch

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// References to resources that are not here yet are tracked in two buckets
// beside the resources:
//
//	batch_pending_refs:   target ref, 0, referrer ref -> kind, job id, absolute source URL
//	batch_pending_by_job: job id, target ref, 0, referrer ref -> "" (until the job ends)
//
// Kind 'A': the referrer holds the absolute source URL; when the target
// arrives (in any job) the referrer is rewritten to the local reference.
// Kind 'L': the referrer already holds the local reference (the job
// expects the target); when the job ends without it, the referrer is
// rewritten to the absolute URL and the entry becomes kind 'A'.
const (
	pendingBucket = "batch_pending_refs"
	byJobBucket   = "batch_pending_by_job"
)

const (
	heldAbsolute = 'A'
	heldLocal    = 'L'
)

func pendingKey(target, referrer string) []byte { return []byte(target + "\x00" + referrer) }

func pendingValue(kind byte, job int64, abs string) []byte {
	v := append([]byte{kind}, binary.BigEndian.AppendUint64(nil, uint64(job))...)
	return append(v, abs...)
}

func parsePending(v []byte) (kind byte, job int64, abs string, ok bool) {
	if len(v) < 9 {
		return 0, 0, "", false
	}
	return v[0], int64(binary.BigEndian.Uint64(v[1:9])), string(v[9:]), true
}

// putPending records p for job.
func putPending(tx *store.Tx, job int64, p pendingRef) error {
	kind := byte(heldAbsolute)
	if p.local {
		kind = heldLocal
	}
	k := pendingKey(p.target, p.referrer)
	if err := tx.KV(byJobBucket).Put(append(idKey(job), k...), nil); err != nil {
		return err
	}
	return tx.KV(pendingBucket).Put(k, pendingValue(kind, job, p.abs))
}

// waitingRef is a reference waiting for its target (see pendingBucket):
// its key there, the referrer, and the entry's kind, job and absolute
// source URL.
type waitingRef struct {
	key      []byte
	referrer string
	kind     byte
	job      int64
	abs      string
}

// waitingFor reads the references waiting for each of targets, by
// target, in one go (see store.KV.ScanPrefixes).
func waitingFor(tx *store.Tx, targets []string) (map[string][]waitingRef, error) {
	prefixes := make([][]byte, len(targets))
	for i, t := range targets {
		prefixes[i] = []byte(t + "\x00")
	}
	out := map[string][]waitingRef{}
	err := tx.KV(pendingBucket).ScanPrefixes(prefixes, func(i int, k, v []byte) (bool, error) {
		if kind, job, abs, ok := parsePending(v); ok {
			t := targets[i]
			out[t] = append(out[t], waitingRef{k, string(k[len(prefixes[i]):]), kind, job, abs})
		}
		return true, nil
	})
	return out, err
}

// readForPage reads at once what writing pg's resources reads, which
// would otherwise cost a database whose reads are round trips one for
// each resource (see store.Tx.Prefetch): the resources' current versions
// and ingestion digests, the references waiting for them (returned by
// target, for relink), and the current versions and digests of the
// referrers relink may rewrite.
func (r *Runner) readForPage(tx *store.Tx, pg *preparedPage, inPage map[string]bool) (map[string][]waitingRef, error) {
	keys := make([]store.Key, 0, len(pg.resources))
	digestKeys := make([][]byte, 0, len(pg.resources))
	targets := make([]string, 0, len(pg.resources))
	listed := make(map[string]bool, len(pg.resources))
	for _, res := range pg.resources {
		keys = append(keys, store.Key{Type: res.typ, ID: res.localID})
		digestKeys = append(digestKeys, []byte(res.localRef()))
		if ref := res.localRef(); !listed[ref] {
			// Once, even if the page has it twice: its second write
			// finds none waiting (see relink).
			listed[ref] = true
			targets = append(targets, ref)
		}
	}
	waiting, err := waitingFor(tx, targets)
	if err != nil {
		return nil, err
	}
	for _, list := range waiting {
		for _, w := range list {
			if w.kind != heldLocal && !inPage[w.referrer] {
				typ, id, _ := strings.Cut(w.referrer, "/")
				keys = append(keys, store.Key{Type: typ, ID: id})
				digestKeys = append(digestKeys, []byte(w.referrer))
			}
		}
	}
	tx.Prefetch(keys)
	tx.KV(digestBucket).Prefetch(digestKeys)
	return waiting, nil
}

// relink settles the references waiting for target, which has just been
// written: referrers holding the source URL are rewritten to the local
// reference (except those on the page being written, which have it
// already). waiting holds what the pending bucket had for each target of
// the page before the page's first write (see readForPage); the page
// changes the entries of a target only in its relink, which takes them
// from waiting, so that they are still what the bucket holds. It
// returns how many resources were rewritten.
func (r *Runner) relink(tx *store.Tx, target string, waiting map[string][]waitingRef, inPage map[string]bool) (int, error) {
	list := waiting[target]
	delete(waiting, target)
	kv := tx.KV(pendingBucket)
	n := 0
	for _, w := range list {
		if err := kv.Delete(w.key); err != nil {
			return n, err
		}
		if err := tx.KV(byJobBucket).Delete(append(idKey(w.job), w.key...)); err != nil {
			return n, err
		}
		if w.kind == heldLocal || inPage[w.referrer] {
			continue
		}
		changed, err := r.rewriteRef(tx, w.referrer, w.abs, target)
		if err != nil {
			return n, err
		}
		if changed {
			n++
		}
	}
	return n, nil
}

// settle closes job's account of references to resources not here: a
// referrer still naming a target that never arrived is rewritten to the
// target's URL at the source, so that no reference is left dangling, and
// waits there (kind 'A') for the target to come with another job. It
// returns how many references the job leaves at the source, and how many
// it relinked here because the target came meanwhile.
func (r *Runner) settle(tx *store.Tx, job int64) (toSource, relinked int, err error) {
	prefix := idKey(job)
	var keys [][]byte
	if err := tx.KV(byJobBucket).Scan(prefix, func(k, _ []byte) (bool, error) {
		if !bytes.HasPrefix(k, prefix) {
			return false, nil
		}
		keys = append(keys, k)
		return true, nil
	}); err != nil {
		return 0, 0, err
	}
	pending := tx.KV(pendingBucket)
	prefetchSettle(tx, job, keys)
	for _, k := range keys {
		if err := tx.KV(byJobBucket).Delete(k); err != nil {
			return toSource, relinked, err
		}
		pk := k[8:]
		target, referrer, ok := strings.Cut(string(pk), "\x00")
		if !ok {
			continue
		}
		kind, owner, abs, ok := parsePending(pending.Get(pk))
		if !ok || owner != job {
			continue // settled already, or taken over by a later job
		}
		typ, id, _ := strings.Cut(target, "/")
		if _, err := tx.Read(typ, id); err == nil {
			// The target is here (it came meanwhile by another way).
			if err := pending.Delete(pk); err != nil {
				return toSource, relinked, err
			}
			if kind == heldAbsolute {
				changed, err := r.rewriteRef(tx, referrer, abs, target)
				if err != nil {
					return toSource, relinked, err
				}
				if changed {
					relinked++
				}
			}
			continue
		}
		toSource++
		if kind == heldLocal {
			if _, err := r.rewriteRef(tx, referrer, target, abs); err != nil {
				return toSource, relinked, err
			}
			if err := pending.Put(pk, pendingValue(heldAbsolute, job, abs)); err != nil {
				return toSource, relinked, err
			}
		}
	}
	return toSource, relinked, nil
}

// prefetchSettle reads at once what settle reads for each of the keys of
// job's references in byJobBucket (see store.Tx.Prefetch): their pending
// entries and targets, then the current versions and digests of the
// referrers of those still the job's.
func prefetchSettle(tx *store.Tx, job int64, keys [][]byte) {
	pks := make([][]byte, 0, len(keys))
	var targets []store.Key
	for _, k := range keys {
		pk := k[8:]
		if target, _, ok := strings.Cut(string(pk), "\x00"); ok {
			pks = append(pks, pk)
			typ, id, _ := strings.Cut(target, "/")
			targets = append(targets, store.Key{Type: typ, ID: id})
		}
	}
	pending := tx.KV(pendingBucket)
	pending.Prefetch(pks)
	tx.Prefetch(targets)
	var referrers []store.Key
	var digestKeys [][]byte
	for _, pk := range pks {
		if _, owner, _, ok := parsePending(pending.Get(pk)); ok && owner == job {
			_, referrer, _ := strings.Cut(string(pk), "\x00")
			typ, id, _ := strings.Cut(referrer, "/")
			referrers = append(referrers, store.Key{Type: typ, ID: id})
			digestKeys = append(digestKeys, []byte(referrer))
		}
	}
	tx.Prefetch(referrers)
	tx.KV(digestBucket).Prefetch(digestKeys)
}

// rewriteRef replaces the reference from with to in the current version of
// referrer ("Type/id") and writes it, when that version is the one
// ingestion wrote (anyone else's version is left as it is). The digest of
// what ingestion wrote is kept current, so the resource coming again from
// the source unchanged is recognized.
func (r *Runner) rewriteRef(tx *store.Tx, referrer, from, to string) (bool, error) {
	typ, id, _ := strings.Cut(referrer, "/")
	v, err := tx.Read(typ, id)
	if err != nil {
		return false, nil // deleted here since: nothing to fix
	}
	dk := []byte(referrer)
	raw := tx.KV(digestBucket).Get(dk)
	if len(raw) != 8+sha256.Size || int64(binary.BigEndian.Uint64(raw)) != v.VersionID {
		// Someone other than ingestion wrote the referrer since: it is not
		// ingestion's to change any more.
		return false, nil
	}
	changed := false
	out, err := rewriteRefs(v.JSON, func(ref string) (string, bool) {
		if ref == from {
			changed = true
			return to, true
		}
		return ref, false
	})
	if err != nil || !changed {
		return false, nil
	}
	m, err := decodeMap(out)
	if err != nil {
		return false, nil
	}
	nv, err := r.fhir.Put(tx, &store.Doc{Type: typ, ID: id, Map: m, JSON: out}, v.VersionID)
	if err != nil {
		return false, fmt.Errorf("batch: rewrite the reference %s in %s: %w", from, referrer, err)
	}
	meta, _ := m["meta"].(map[string]any)
	if source, _ := meta["source"].(string); source != "" {
		if canon, err := canonical(nv.JSON, id, source, nil); err == nil {
			if err := tx.KV(digestBucket).Put(dk, digestValue(nv.VersionID, sha256.Sum256(canon))); err != nil {
				return true, err
			}
		}
	}
	return true, nil
}
