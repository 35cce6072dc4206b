package store

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"
	"sync"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// A resource's index entries ("X:<Type>", by id) are kept packed: a zero
// byte, then one group per distinct key and payload: the key, the payload,
// and the numbers of the parameters that have that entry (code and
// combo-code, subject and patient share theirs). A parameter's number is
// given the first time it is stored, and kept in the "M" bucket ("p:"
// code -> number, "pn:" number -> code), so that numbers never change.
// Records written before start with the length of a parameter code, never
// zero, and are read as they are.
//
// The _id entries are not stored at all: the id is the key, and _id
// clauses are answered from the current versions (see idScan).

const entriesPacked = 0

// params is the table of parameter numbers known to have been committed.
type params struct {
	mu    sync.RWMutex
	names []string // by number - 1
	nums  map[string]uint64
}

func (p *params) num(code string) (uint64, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	n, ok := p.nums[code]
	return n, ok
}

func (p *params) name(n uint64) (string, bool) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if n == 0 || n > uint64(len(p.names)) || p.names[n-1] == "" {
		return "", false
	}
	return p.names[n-1], true
}

func (p *params) add(code string, n uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.nums == nil {
		p.nums = map[string]uint64{}
	}
	p.nums[code] = n
	for uint64(len(p.names)) < n {
		p.names = append(p.names, "")
	}
	p.names[n-1] = code
}

var (
	paramKey     = []byte("p:")
	paramNameKey = []byte("pn:")
)

func paramNameKeyOf(n uint64) []byte {
	return binary.BigEndian.AppendUint64(bytes.Clone(paramNameKey), n)
}

// loadParams reads the parameter numbers of the database.
func (s *Store) loadParams(btx backend.Tx) {
	meta := btx.Bucket(metaBucket)
	if meta == nil {
		return
	}
	c := meta.Cursor()
	for k, v := c.Seek(paramKey); k != nil && bytes.HasPrefix(k, paramKey); k, v = c.Next() {
		if n, w := binary.Uvarint(v); w > 0 {
			s.params.add(string(k[len(paramKey):]), n)
		}
	}
}

// paramNum returns the number of parameter code, giving it one if it has
// none (in this transaction: the table learns it once committed).
func (tx *Tx) paramNum(code string) (uint64, error) {
	if n, ok := tx.s.params.num(code); ok {
		return n, nil
	}
	meta, err := tx.bucket(metaBucket)
	if err != nil {
		return 0, err
	}
	key := append(bytes.Clone(paramKey), code...)
	if v := meta.Get(key); v != nil {
		if n, w := binary.Uvarint(v); w > 0 {
			return n, nil
		}
	}
	n, err := tx.nextSequence(meta, metaBucket)
	if err != nil {
		return 0, err
	}
	if err := tx.put(meta, metaBucket, key, binary.AppendUvarint(nil, n)); err != nil {
		return 0, err
	}
	if err := tx.put(meta, metaBucket, paramNameKeyOf(n), []byte(code)); err != nil {
		return 0, err
	}
	tx.AfterCommit(func() { tx.s.params.add(code, n) })
	return n, nil
}

// paramName returns the code of parameter number n.
func (tx *Tx) paramName(n uint64) (string, bool) {
	if code, ok := tx.s.params.name(n); ok {
		return code, true
	}
	// Numbered by a write not yet committed (this one).
	if meta := tx.btx.Bucket(metaBucket); meta != nil {
		if v := meta.Get(paramNameKeyOf(n)); v != nil {
			return string(v), true
		}
	}
	return "", false
}

// encodeEntries packs es (without _id's) as an "X:<Type>" value.
func (tx *Tx) encodeEntries(es []search.Entry) ([]byte, error) {
	order := make([]int, 0, len(es))
	size := 1
	for i, e := range es {
		if e.Param != "_id" {
			order = append(order, i)
			size += len(e.Key) + len(e.Payload) + 4
		}
	}
	slices.SortFunc(order, func(a, b int) int {
		if c := strings.Compare(es[a].Key, es[b].Key); c != 0 {
			return c
		}
		return bytes.Compare(es[a].Payload, es[b].Payload)
	})
	b := make([]byte, 1, size)
	b[0] = entriesPacked
	nums := make([]uint64, 0, 4)
	for i := 0; i < len(order); {
		e := es[order[i]]
		nums = nums[:0]
		for ; i < len(order) && es[order[i]].Key == e.Key && bytes.Equal(es[order[i]].Payload, e.Payload); i++ {
			n, err := tx.paramNum(es[order[i]].Param)
			if err != nil {
				return nil, err
			}
			nums = append(nums, n)
		}
		b = binary.AppendUvarint(b, uint64(len(e.Key)))
		b = append(b, e.Key...)
		b = binary.AppendUvarint(b, uint64(len(e.Payload)))
		b = append(b, e.Payload...)
		b = binary.AppendUvarint(b, uint64(len(nums)))
		for _, n := range nums {
			b = binary.AppendUvarint(b, n)
		}
	}
	return b, nil
}

// storedEntriesOf decodes the entries b as they are stored (since
// packing, without _id's).
func (tx *Tx) storedEntriesOf(b []byte) []search.Entry { return tx.decodeEntriesOf(b, nil, nil, "") }

// decodeEntriesOf decodes into out the entries of b whose parameter want
// holds (all when want is nil), without copying the others; with id set,
// the _id entries of id are added (when want has _id).
func (tx *Tx) decodeEntriesOf(b []byte, want map[string]bool, out []search.Entry, id string) []search.Entry {
	if len(b) == 0 || b[0] != entriesPacked {
		return decodeOldEntries(b, want, out)
	}
	b = b[1:]
	next := func() ([]byte, bool) {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return nil, false
		}
		v := b[k : k+int(n)]
		b = b[k+int(n):]
		return v, true
	}
	for len(b) > 0 {
		k, ok1 := next()
		pl, ok2 := next()
		count, w := binary.Uvarint(b)
		if !ok1 || !ok2 || w <= 0 {
			break
		}
		b = b[w:]
		var key string
		var payload []byte
		for range count {
			n, w := binary.Uvarint(b)
			if w <= 0 {
				return out
			}
			b = b[w:]
			code, ok := tx.paramName(n)
			if !ok || (want != nil && !want[code]) {
				continue
			}
			if key == "" {
				key = string(k)
				if len(pl) > 0 {
					payload = bytes.Clone(pl)
				}
			}
			out = append(out, search.Entry{Param: code, Key: key, Payload: payload})
		}
	}
	if id != "" && (want == nil || want["_id"]) {
		out = append(out, search.IDEntries(id)...)
	}
	return out
}

// decodeOldEntries reads the entries as stored before they were packed:
// parameter, key and payload, each with its length, for every entry (_id's
// included).
func decodeOldEntries(b []byte, want map[string]bool, out []search.Entry) []search.Entry {
	next := func() ([]byte, bool) {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return nil, false
		}
		v := b[k : k+int(n)]
		b = b[k+int(n):]
		return v, true
	}
	for len(b) > 0 {
		p, ok1 := next()
		k, ok2 := next()
		pl, ok3 := next()
		if !ok1 || !ok2 || !ok3 {
			break
		}
		if want != nil && !want[string(p)] {
			continue
		}
		out = append(out, search.Entry{Param: string(p), Key: string(k), Payload: bytes.Clone(pl)})
	}
	return out
}
