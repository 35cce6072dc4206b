package fhir

import (
	"bytes"
	"compress/flate"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

// pagesBucket keeps the result sets of Patient/{id}/$everything (and
// searches too long for a link) between pages: key (expiry then random
// bytes) -> keptSet JSON.
const pagesBucket = "fhir_pages"

// maxCursor is the longest sealed cursor a link carries: with the rest of
// the URL it must fit the request line a server accepts.
const maxCursor = 48 << 10

// pageCache is what paging needs, answerable by any process on the
// database: a search (and type-level $everything) is its parameters,
// sealed with the cursor key into its links' cursor, so that nothing is
// kept for it; an instance $everything's result set (its ids, which do
// not fit a link) is kept in the database until it expires. One snapshot
// may take a quarter of the budget: one larger (a search whose query alone
// is that large, an $everything with that many results) is refused as too
// costly.
type pageCache struct {
	st       *store.Store
	ttl      time.Duration
	maxBytes int64
	seal     *secrets.Cipher
}

func newPageCache(st *store.Store, ttl time.Duration, maxBytes int64, seal *secrets.Cipher) *pageCache {
	if seal == nil {
		// Links then work in this process only: -secret-key shares the
		// key among processes.
		k := make([]byte, 32)
		_, _ = rand.Read(k)
		seal, _ = secrets.NewCipher(hex.EncodeToString(k))
	}
	return &pageCache{st: st, ttl: ttl, maxBytes: maxBytes, seal: seal}
}

// maxSet is the most bytes one result set may hold.
func (c *pageCache) maxSet() int64 { return c.maxBytes / 4 }

// Why a result set or query is refused as too costly (errTooCostly).
const (
	costlyQuery     = iota // the query alone takes more than maxSet to keep
	costlyResults          // the results counted so far take more than maxSet
	costlyResultSet        // the whole result set, n results, takes more than maxSet
	costlyInBundle         // too long for a link, and a batch Bundle's read cannot keep it
)

// errTooCostly refuses, as 422 with issue code too-costly, what paging
// cannot carry: by why, a query whose estimated size (bytes) is more than
// maxSet; a result set of which n results had been counted, with bytes of
// them, when counting stopped past maxSet (the set has at least n); a whole
// result set of n results and bytes more than maxSet; or a
// query too long for a link read inside a batch Bundle. The whole message
// is the issue's diagnostics.
func (c *pageCache) errTooCostly(what string, why int, n int, bytes int64) error {
	limit := fmt.Sprintf("%d bytes, a quarter of -search-cache-bytes (%d)", c.maxSet(), c.maxBytes)
	var msg string
	switch why {
	case costlyQuery:
		msg = fmt.Sprintf("%s is too large to page: keeping it for paging takes about %d bytes, more than one search may take (%s); shorten the query, or raise -search-cache-bytes",
			what, bytes, limit)
	case costlyResults:
		msg = fmt.Sprintf("%s has at least %d results (counting stopped there, at about %d bytes), more than one result set may take to page (%s); narrow it (by date, type or a more selective parameter), or raise -search-cache-bytes",
			what, n, bytes, limit)
	case costlyResultSet:
		msg = fmt.Sprintf("%s has %d results, about %d bytes to keep for paging, more than one result set may take (%s); narrow it (by date, type or a more selective parameter), or raise -search-cache-bytes",
			what, n, bytes, limit)
	default:
		msg = fmt.Sprintf("%s is too large to page inside a batch Bundle: it is too long for a link (more than %d bytes sealed), and a batch Bundle's read cannot keep it in the database; send the search on its own",
			what, maxCursor)
	}
	return errs.E("fhir.page", errs.Unprocessable, msg, errs.Issue{Code: "too-costly", Message: msg})
}

// sealedSnapshot is a snapshot as its cursor carries it.
type sealedSnapshot struct {
	Typ     string `json:"t"`
	Params  string `json:"p,omitempty"`
	Lenient bool   `json:"l,omitempty"`
	Self    string `json:"s,omitempty"` // kept sets only: a cursor's self link is the page's own
	Binding string `json:"b"`
	QType   string `json:"qt,omitempty"`
	QCount  int    `json:"qc,omitempty"`
	QKept   string `json:"qk,omitempty"`
	Query   bool   `json:"q,omitempty"`
	Expires int64  `json:"x"`
}

// keptSet is an $everything result set as the database keeps it.
type keptSet struct {
	sealedSnapshot
	IDs []string `json:"ids"`
}

func (sn *snapshot) sealed(expires time.Time) sealedSnapshot {
	out := sealedSnapshot{Typ: sn.typ, Lenient: sn.lenient, Self: sn.self, Binding: sn.binding, Expires: expires.Unix()}
	if sn.params != nil {
		out.Params = sn.params.Encode()
		if out.Params == "" {
			out.Params = "&" // present but empty
		}
	}
	if q := sn.query; q != nil {
		out.Query, out.QType, out.QCount, out.QKept = true, q.Type, q.Count, q.Kept.Encode()
	}
	return out
}

func (ss *sealedSnapshot) snapshot() (*snapshot, error) {
	sn := &snapshot{typ: ss.Typ, lenient: ss.Lenient, self: ss.Self, binding: ss.Binding, expires: time.Unix(ss.Expires, 0)}
	if ss.Params != "" {
		p, err := url.ParseQuery(strings.TrimPrefix(ss.Params, "&"))
		if err != nil {
			return nil, err
		}
		sn.params = p
	}
	if ss.Query {
		kept, err := url.ParseQuery(ss.QKept)
		if err != nil {
			return nil, err
		}
		sn.query = &search.Query{Type: ss.QType, Count: ss.QCount, Kept: kept}
	}
	return sn, nil
}

// keptSetsKey carries, in a request's context, the result sets to write
// once its read transaction has ended (see withKeptSets).
type keptSetsKey struct{}

// keptSets are result sets waiting to be written.
type keptSets struct {
	mu   sync.Mutex
	sets map[string][]byte
}

// withKeptSets returns ctx carrying a list of result sets to write after
// the read: pageCache.flush writes them, before the answer that links to
// them is sent.
func withKeptSets(ctx context.Context) (context.Context, *keptSets) {
	k := &keptSets{sets: map[string][]byte{}}
	return context.WithValue(ctx, keptSetsKey{}, k), k
}

// put makes sn pageable and returns the key its links carry; a snapshot
// over maxSet is refused. A search is sealed into the key (unless that
// makes a key longer than maxCursor); a result set (ids), or a search too
// long for a link, is written to the database: after tx ends when the request
// carries a list (withKeptSets), else in tx, which must then be a write.
func (c *pageCache) put(tx *store.Tx, sn *snapshot, what string) (string, error) {
	sn.bytes = sn.size()
	if sn.bytes > c.maxSet() {
		if sn.ids == nil {
			return "", c.errTooCostly(what, costlyQuery, 0, sn.bytes)
		}
		return "", c.errTooCostly(what, costlyResultSet, len(sn.ids), sn.bytes)
	}
	expires := time.Now().Add(c.ttl)
	sn.expires = expires
	if sn.ids == nil {
		ss := sn.sealed(expires)
		ss.Self = ""
		raw, err := deflate(ss)
		if err != nil {
			return "", errs.E("fhir.page", errs.Internal, err)
		}
		sealed, err := c.seal.Seal(raw)
		if err != nil {
			return "", errs.E("fhir.page", errs.Internal, err)
		}
		if key := "c" + base64.RawURLEncoding.EncodeToString(sealed); len(key) <= maxCursor {
			return key, nil
		}
		// Too long for a link (a very long POST _search): kept in the
		// database like a result set.
	}
	raw, err := json.Marshal(keptSet{sealedSnapshot: sn.sealed(expires), IDs: sn.ids})
	if err != nil {
		return "", errs.E("fhir.page", errs.Internal, err)
	}
	b := binary.BigEndian.AppendUint64(nil, uint64(expires.Unix()))
	r := make([]byte, 12)
	_, _ = rand.Read(r)
	b = append(b, r...)
	key := "k" + hex.EncodeToString(b)
	if k, ok := tx.Context().Value(keptSetsKey{}).(*keptSets); ok {
		k.mu.Lock()
		k.sets[key] = raw
		k.mu.Unlock()
		return key, nil
	}
	// No list to write after the read: in a write transaction (a
	// transaction Bundle), with it.
	if err := tx.KV(pagesBucket).Put(b, raw); err != nil {
		// A read with no list to write after it (a batch Bundle's GET).
		return "", c.errTooCostly(what, costlyInBundle, 0, 0)
	}
	return key, nil
}

// flush writes the result sets k holds (see withKeptSets).
func (c *pageCache) flush(ctx context.Context, k *keptSets) error {
	k.mu.Lock()
	sets := k.sets
	k.sets = map[string][]byte{}
	k.mu.Unlock()
	if len(sets) == 0 {
		return nil
	}
	return c.write(ctx, sets)
}

// write stores sets and deletes some of the expired ones (their keys
// sort by expiry, so they are the first).
func (c *pageCache) write(ctx context.Context, sets map[string][]byte) error {
	now := uint64(time.Now().Unix())
	return c.st.Write(context.WithoutCancel(ctx), func(tx *store.Tx) error {
		kv := tx.KV(pagesBucket)
		var old [][]byte
		if err := kv.Scan(nil, func(k, _ []byte) (bool, error) {
			if len(k) < 8 || binary.BigEndian.Uint64(k[:8]) > now || len(old) >= 100 {
				return false, nil
			}
			old = append(old, k)
			return true, nil
		}); err != nil {
			return err
		}
		for _, k := range old {
			if err := kv.Delete(k); err != nil {
				return err
			}
		}
		for key, raw := range sets {
			b, err := hex.DecodeString(key[1:])
			if err != nil {
				return err
			}
			if err := kv.Put(b, raw); err != nil {
				return err
			}
		}
		return nil
	})
}

// errGone is the 410 for a link whose snapshot get did not find: what
// ("this search result") has expired, or, for a sealed cursor this
// server's key cannot open, the link was made by a process with another
// key (every process behind one base URL needs the same -secret-key:
// without one each makes its own). again says what the client does next.
func (c *pageCache) errGone(op, key, what, again string) error {
	if len(key) > 1 && key[0] == 'c' && !c.opens(key[1:]) {
		return errs.E(op, errs.Gone, fmt.Sprintf("the link to %s was not sealed with this server's key: it was made by another server, "+
			"or by a process with another -secret-key (every process behind one base URL needs the same); %s", what, again))
	}
	return errs.E(op, errs.Gone, what+" has expired; "+again)
}

// opens reports whether enc is a cursor sealed with this server's key.
func (c *pageCache) opens(enc string) bool {
	sealed, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return false
	}
	_, err = c.seal.Open(sealed)
	return err == nil
}

// get returns the snapshot of key, nil when it is not one of this
// server's (or the database's) or has expired.
func (c *pageCache) get(tx *store.Tx, key string) *snapshot {
	if len(key) < 2 {
		return nil
	}
	now := time.Now()
	switch key[0] {
	case 'c':
		sealed, err := base64.RawURLEncoding.DecodeString(key[1:])
		if err != nil {
			return nil
		}
		raw, err := c.seal.Open(sealed)
		if err != nil {
			return nil
		}
		var ss sealedSnapshot
		if inflate(raw, &ss) != nil || now.Unix() >= ss.Expires {
			return nil
		}
		sn, err := ss.snapshot()
		if err != nil {
			return nil
		}
		return sn
	case 'k':
		b, err := hex.DecodeString(key[1:])
		if err != nil || len(b) < 8 {
			return nil
		}
		raw := tx.KV(pagesBucket).Get(b)
		if raw == nil {
			return nil
		}
		var ks keptSet
		if json.Unmarshal(raw, &ks) != nil || now.Unix() >= ks.Expires {
			return nil
		}
		sn, err := ks.snapshot()
		if err != nil {
			return nil
		}
		sn.ids = ks.IDs
		return sn
	}
	return nil
}

// Stats reports the result sets the database keeps for paging and the
// bytes they take (searches keep nothing: their links carry them).
func (c *pageCache) Stats(ctx context.Context) (n int, bytes int64) {
	now := uint64(time.Now().Unix())
	_ = c.st.View(ctx, func(tx *store.Tx) error {
		return tx.KV(pagesBucket).Scan(nil, func(k, v []byte) (bool, error) {
			if len(k) >= 8 && binary.BigEndian.Uint64(k[:8]) > now {
				n++
				bytes += int64(len(k) + len(v))
			}
			return true, nil
		})
	})
	return n, bytes
}

// flateWriters and flateReaders keep compressors and decompressors
// between pages: a new BestSpeed compressor allocates and clears about a
// megabyte, which cost a first page with a next link three times the CPU
// of the search itself; a reset one costs nothing of the kind.
var (
	flateWriters = sync.Pool{New: func() any {
		w, _ := flate.NewWriter(nil, flate.BestSpeed)
		return w
	}}
	flateReaders = sync.Pool{New: func() any { return flate.NewReader(bytes.NewReader(nil)) }}
)

// deflate encodes v as compressed JSON: a query's parameters repeat
// themselves (systems, prefixes), and a cursor should be short.
func deflate(v any) ([]byte, error) {
	var b bytes.Buffer
	w := flateWriters.Get().(*flate.Writer)
	defer flateWriters.Put(w)
	w.Reset(&b)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// inflate decodes what deflate made, reading at most 4 MiB.
func inflate(raw []byte, v any) error {
	r := flateReaders.Get().(io.ReadCloser)
	defer flateReaders.Put(r)
	if err := r.(flate.Resetter).Reset(bytes.NewReader(raw), nil); err != nil {
		return err
	}
	return json.NewDecoder(io.LimitReader(r, 4<<20)).Decode(v)
}
