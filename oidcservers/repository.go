package oidcservers

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"
	"sync/atomic"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

// bucketName is the store's key-value bucket holding the definitions,
// keyed by pid as an 8-byte big-endian integer so keys sort by pid.
const bucketName = "oidc_servers"

// record is a definition as stored: the Server fields plus the client secret,
// sealed with the secrets.Cipher. Server.ClientSecret has no JSON name, so the
// plaintext can never be written by accident.
type record struct {
	Server
	SealedClientSecret []byte `json:"sealedClientSecret,omitempty"`
}

// InUseFunc reports whether a definition is used by work that must finish
// before it may be deleted, such as a running batch job.
type InUseFunc func(ctx context.Context, pid int64) (bool, error)

// Repository stores OIDC server definitions in the store's database. It is
// safe for concurrent use. Issuers are unique: writes run in the store's
// single writer transaction, so the uniqueness check and the write cannot
// interleave.
type Repository struct {
	st     *store.Store
	cipher *secrets.Cipher
	inUse  atomic.Pointer[InUseFunc]
}

// NewRepository opens the definitions kept in st. c may be
// nil when no secret key is configured; then definitions cannot hold client
// secrets, and NewRepository fails if stored ones exist, rather than start a
// server that cannot use them. With a key, every stored secret is checked to
// open, and secrets sealed with an older key (see secrets.NewCipher on
// rotation) are re-sealed with the current one.
func NewRepository(st *store.Store, c *secrets.Cipher) (*Repository, error) {
	r := &Repository{st: st, cipher: c}
	err := st.Write(context.Background(), func(tx *store.Tx) error {
		b := tx.KV(bucketName)
		var rotate []record
		err := b.Scan(nil, func(_, v []byte) (bool, error) {
			var rec record
			if err := json.Unmarshal(v, &rec); err != nil {
				return false, fmt.Errorf("decode stored definition: %w", err)
			}
			if len(rec.SealedClientSecret) == 0 {
				return true, nil
			}
			if c == nil {
				return false, fmt.Errorf("stored OIDC server definitions have client secrets but no secret key is configured: set -secret-key or P2P_SECRET_KEY to the key they were stored with")
			}
			plain, err := c.Open(rec.SealedClientSecret)
			if err != nil {
				return false, fmt.Errorf("client secret of OIDC server %d: %w", rec.PID, err)
			}
			if c.NeedsRotation(rec.SealedClientSecret) {
				rec.ClientSecret = string(plain)
				rotate = append(rotate, rec)
			}
			return true, nil
		})
		if err != nil {
			return err
		}
		for _, rec := range rotate {
			if err := r.put(b, rec.Server); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("oidcservers: %w", err)
	}
	return r, nil
}

// SetInUseCheck installs the check Delete consults; the batch package supplies
// it. nil removes it.
func (r *Repository) SetInUseCheck(f InUseFunc) {
	if f == nil {
		r.inUse.Store(nil)
		return
	}
	r.inUse.Store(&f)
}

func key(pid int64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], uint64(pid))
	return k[:]
}

func notFound(op string, pid int64) error {
	return errs.E(op, errs.NotFound, fmt.Sprintf("no OIDC server definition with pid %d", pid))
}

// List returns every definition ordered by pid, without client secrets.
func (r *Repository) List(ctx context.Context) ([]Server, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []Server
	err := r.st.View(ctx, func(tx *store.Tx) error {
		return tx.KV(bucketName).Scan(nil, func(_, v []byte) (bool, error) {
			var rec record
			if err := json.Unmarshal(v, &rec); err != nil {
				return false, err
			}
			out = append(out, rec.Server)
			return true, nil
		})
	})
	if err != nil {
		return nil, errs.E("oidcservers.list", err)
	}
	return out, nil
}

// Get returns the definition with the given pid, its client secret decrypted.
func (r *Repository) Get(ctx context.Context, pid int64) (Server, error) {
	const op = "oidcservers.get"
	if err := ctx.Err(); err != nil {
		return Server{}, err
	}
	var rec record
	var found bool
	err := r.st.View(ctx, func(tx *store.Tx) error {
		v := tx.KV(bucketName).Get(key(pid))
		if v == nil {
			return nil
		}
		found = true
		return json.Unmarshal(v, &rec)
	})
	if err != nil {
		return Server{}, errs.E(op, err)
	}
	if !found {
		return Server{}, notFound(op, pid)
	}
	return r.open(op, rec)
}

// ByIssuer returns the definition whose issuer is iss (see SameIssuer), its
// client secret decrypted: the lookup for a token's iss claim.
func (r *Repository) ByIssuer(ctx context.Context, iss string) (Server, error) {
	const op = "oidcservers.by_issuer"
	all, err := r.List(ctx)
	if err != nil {
		return Server{}, err
	}
	for _, s := range all {
		if SameIssuer(s.Issuer, iss) {
			return r.Get(ctx, s.PID)
		}
	}
	return Server{}, errs.E(op, errs.NotFound, "no OIDC server definition for this issuer")
}

func (r *Repository) open(op string, rec record) (Server, error) {
	s := rec.Server
	if len(rec.SealedClientSecret) > 0 {
		plain, err := r.cipher.Open(rec.SealedClientSecret)
		if err != nil {
			return Server{}, errs.E(op, fmt.Errorf("client secret of OIDC server %d: %w", rec.PID, err))
		}
		s.ClientSecret = string(plain)
	}
	return s, nil
}

// Create validates s, assigns it the next pid and stores it. s.PID is ignored.
func (r *Repository) Create(ctx context.Context, s Server) (Server, error) {
	const op = "oidcservers.create"
	if err := ctx.Err(); err != nil {
		return Server{}, err
	}
	s.Normalize()
	err := r.st.Write(ctx, func(tx *store.Tx) error {
		b := tx.KV(bucketName)
		if err := r.checkAll(op, b, &s, 0); err != nil {
			return err
		}
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		s.PID = int64(seq)
		return r.put(b, s)
	})
	if err != nil {
		return Server{}, errs.E(op, err)
	}
	return s, nil
}

// Update applies change to the stored definition pid and stores the result
// after validating it, all in one transaction. change runs inside the
// database's write transaction: it must not do I/O. The pid cannot change.
func (r *Repository) Update(ctx context.Context, pid int64, change func(*Server) error) (Server, error) {
	const op = "oidcservers.update"
	if err := ctx.Err(); err != nil {
		return Server{}, err
	}
	var out Server
	err := r.st.Write(ctx, func(tx *store.Tx) error {
		b := tx.KV(bucketName)
		v := b.Get(key(pid))
		if v == nil {
			return notFound(op, pid)
		}
		var rec record
		if err := json.Unmarshal(v, &rec); err != nil {
			return err
		}
		s, err := r.open(op, rec)
		if err != nil {
			return err
		}
		if err := change(&s); err != nil {
			return err
		}
		s.PID = pid
		s.Normalize()
		if err := r.checkAll(op, b, &s, pid); err != nil {
			return err
		}
		out = s
		return r.put(b, s)
	})
	if err != nil {
		return Server{}, errs.E(op, err)
	}
	return out, nil
}

// Delete removes the definition pid. It is refused with a Conflict error while
// the in-use check (SetInUseCheck) reports it in use. The check runs before
// the write transaction, so work starting in between is not seen: users of a
// definition must cope with it disappearing.
func (r *Repository) Delete(ctx context.Context, pid int64) error {
	const op = "oidcservers.delete"
	if err := ctx.Err(); err != nil {
		return err
	}
	if f := r.inUse.Load(); f != nil {
		busy, err := (*f)(ctx, pid)
		if err != nil {
			return errs.E(op, err)
		}
		if busy {
			return errs.E(op, errs.Conflict, fmt.Sprintf("OIDC server definition %d is in use by a running batch job; delete it when the job has ended", pid))
		}
	}
	err := r.st.Write(ctx, func(tx *store.Tx) error {
		b := tx.KV(bucketName)
		if b.Get(key(pid)) == nil {
			return notFound(op, pid)
		}
		return b.Delete(key(pid))
	})
	if err != nil {
		return errs.E(op, err)
	}
	return nil
}

// check validates s and refuses a client secret when no key is configured.
func (r *Repository) check(op string, s *Server) error {
	issues := s.Validate()
	if s.ClientSecret != "" && r.cipher == nil {
		issues = append(issues, errs.Issue{Code: "value", Path: "clientSecret",
			Message: "cannot be stored: the server has no secret key (set -secret-key or P2P_SECRET_KEY)"})
	}
	if len(issues) > 0 {
		sort.SliceStable(issues, func(i, j int) bool { return issues[i].Path < issues[j].Path })
		return errs.E(op, errs.Invalid, "the OIDC server definition has invalid fields", issues)
	}
	return nil
}

// Problems returns every problem s would be stored with, as the issues
// Create and Update report: its fields (Validate), a client secret with no
// secret key to seal it, and an issuer another definition than self (0
// for none) has. It writes nothing; the API uses it to report a request's
// problems all at once.
func (r *Repository) Problems(ctx context.Context, s Server, self int64) ([]errs.Issue, error) {
	const op = "oidcservers.problems"
	s.Normalize()
	var issues []errs.Issue
	err := r.st.View(ctx, func(tx *store.Tx) error {
		err := r.checkAll(op, tx.KV(bucketName), &s, self)
		if k := errs.KindOf(err); k == errs.Invalid || k == errs.Conflict {
			_, issues = errs.Public(err)
			return nil
		}
		return err
	})
	if err != nil {
		return nil, errs.E(op, err)
	}
	return issues, ctx.Err()
}

// checkAll is check and uniqueIssuer together: when the fields are
// invalid, a taken issuer is one more of the problems reported (400);
// alone it is a Conflict (409).
func (r *Repository) checkAll(op string, b store.KV, s *Server, self int64) error {
	err := r.check(op, s)
	var dup error
	if s.Issuer != "" {
		dup = uniqueIssuer(op, b, s.Issuer, self)
	}
	switch {
	case err == nil || (dup != nil && errs.KindOf(dup) != errs.Conflict):
		return dup
	case dup == nil:
		return err
	}
	_, issues := errs.Public(err)
	_, more := errs.Public(dup)
	return errs.E(op, errs.Invalid, "the OIDC server definition has invalid fields", append(issues, more...))
}

// uniqueIssuer fails if another definition than self has the same issuer.
func uniqueIssuer(op string, b store.KV, issuer string, self int64) error {
	want := issuerKey(issuer)
	return b.Scan(nil, func(k, v []byte) (bool, error) {
		var rec record
		if err := json.Unmarshal(v, &rec); err != nil {
			return false, err
		}
		if rec.PID != self && issuerKey(rec.Issuer) == want {
			return false, errs.E(op, errs.Conflict, "issuer is already registered",
				errs.Issue{Code: "duplicate", Path: "issuer", Message: fmt.Sprintf("already registered (OIDC server %d)", rec.PID)})
		}
		return true, nil
	})
}

// put seals s's client secret and writes the record.
func (r *Repository) put(b store.KV, s Server) error {
	rec := record{Server: s}
	if s.ClientSecret != "" {
		sealed, err := r.cipher.Seal([]byte(s.ClientSecret))
		if err != nil {
			return err
		}
		rec.SealedClientSecret = sealed
	}
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return b.Put(key(s.PID), v)
}
