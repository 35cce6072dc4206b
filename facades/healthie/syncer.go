package healthie

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/lease"
)

// IDPrefix starts the id of every resource the Syncer writes to the local
// store ("Patient/healthie-1042" for Healthie user 1042), so synced
// resources cannot clash with local ones; their references carry it too.
const IDPrefix = "healthie-"

// syncBucket keeps, per synced resource ("<type>/<Healthie id>"), the
// SHA-256 of the mapped resource last written, so an unchanged record
// makes no new version.
const syncBucket = "healthie_sync"

// SyncConfig sets up a Syncer.
type SyncConfig struct {
	// Client reaches Healthie.
	Client *Client
	// Interval is the time between full syncs; default 15 minutes. After a
	// failed sync the next one is tried after at most a minute.
	Interval time.Duration
	// PageSize is how many records one Healthie page asks for; default 100.
	PageSize int
	// Leases makes the full sync a periodic task of one process per
	// Interval among those sharing the database (a process that dies in a
	// sync leaves it to another once its lease expires); nil: the Syncer
	// makes its own and releases it on Close.
	Leases *lease.Manager
	Logger *slog.Logger
}

// SyncReport says what one full sync did.
type SyncReport struct {
	Started   time.Time `json:"started"`
	Finished  time.Time `json:"finished"`
	Written   int       `json:"written"`   // new or changed resources
	Unchanged int       `json:"unchanged"` // records already up to date
	Deleted   int       `json:"deleted"`   // records gone from Healthie
	Error     string    `json:"error,omitempty"`
}

// Syncer keeps a copy of the facade's resources in the local FHIR store
// (the -healthie-sync mode), so that searches, Subscriptions and
// $everything see them: a full sync at Start and every Interval, and a
// refresh of one record whenever a webhook names it. Resources are written
// through the FHIR server's write path (validators, store hooks, so
// matching Subscriptions fire) with ids IDPrefix+<Healthie id>, the
// facade's meta.tag and meta.source; a record gone from Healthie becomes a
// delete, so reading it answers 410. Clients cannot write resources with
// the prefix: only the Syncer does.
type Syncer struct {
	fs  *fhir.Server
	st  *store.Store
	src source
	cfg SyncConfig
	log *slog.Logger

	full sync.Mutex // one full sync at a time

	leases    *lease.Manager
	ownLeases bool
	periodic  *lease.Periodic

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
	last   SyncReport
}

// NewSyncer builds a Syncer writing through fs, and registers with fs the
// validators that keep clients from writing synced resources. It does no
// I/O; Start begins syncing.
func NewSyncer(fs *fhir.Server, cfg SyncConfig) (*Syncer, error) {
	if cfg.Client == nil {
		return nil, errors.New("healthie: the syncer needs a client")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 15 * time.Minute
	}
	if cfg.PageSize <= 0 {
		cfg.PageSize = 100
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Syncer{fs: fs, st: fs.Store(), src: source{cfg.Client, mapper{prefix: IDPrefix, source: cfg.Client.URL()}}, cfg: cfg, log: cfg.Logger}
	for _, typ := range Types {
		fs.AddValidator(typ, s.guard)
	}
	if s.leases = cfg.Leases; s.leases == nil {
		s.leases, s.ownLeases = lease.New(s.st, lease.Config{Logger: cfg.Logger}), true
	}
	s.periodic = s.leases.Periodic("healthie/sync", cfg.Interval, time.Minute, s.syncOnce)
	return s, nil
}

type syncKey struct{}

func syncContext(ctx context.Context) context.Context { return context.WithValue(ctx, syncKey{}, true) }

// guard refuses a client's write of a synced resource: it would be
// overwritten by the next sync, and would pass for Healthie's data.
func (s *Syncer) guard(tx *store.Tx, doc *store.Doc, _ *store.Version) error {
	if ok, _ := tx.Context().Value(syncKey{}).(bool); ok || !strings.HasPrefix(doc.ID, IDPrefix) {
		return nil
	}
	return errs.E("healthie.guard", errs.Unprocessable, fmt.Sprintf(
		"%s/%s is a copy of Healthie's data written by the Healthie sync; change it in Healthie or through the Healthie facade (%s/%s)",
		doc.Type, doc.ID, doc.Type, strings.TrimPrefix(doc.ID, IDPrefix)))
}

// Start runs a full sync now and then every Interval, until ctx ends or
// Close is called: among the processes sharing the database, the one that
// finds it due runs it (after a failed sync, it is due again after at most
// a minute).
func (s *Syncer) Start(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		return
	}
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan struct{})
	if s.ownLeases {
		s.leases.Start(ctx)
	}
	s.periodic.Start(ctx)
	go func(done chan struct{}) {
		<-ctx.Done()
		s.periodic.Close()
		close(done)
	}(s.done)
}

// syncOnce is one run of the periodic sync.
func (s *Syncer) syncOnce(ctx context.Context) error {
	rep, err := s.SyncAll(ctx)
	switch {
	case ctx.Err() != nil:
	case err != nil:
		s.log.Warn("healthie: sync failed; retrying", "err", err, "written", rep.Written)
	default:
		s.log.Info("healthie: synced", "written", rep.Written, "unchanged", rep.Unchanged, "deleted", rep.Deleted,
			"took", rep.Finished.Sub(rep.Started).Round(time.Millisecond))
	}
	return err
}

// Close stops the periodic sync and waits for the one under way to stop.
func (s *Syncer) Close() error {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.cancel = nil
	s.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	<-done
	if s.ownLeases {
		return s.leases.Close()
	}
	return nil
}

// Last returns the report of the last full sync this process ran (zero
// before the first; with several processes, another may have run later).
func (s *Syncer) Last() SyncReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// SyncAll copies every record of every type the facade serves into the
// local store, writing only what changed, and deletes the synced
// resources whose records Healthie no longer has. A type whose listing
// fails is left as it was (nothing of it is deleted); the error says which.
func (s *Syncer) SyncAll(ctx context.Context) (SyncReport, error) {
	s.full.Lock()
	defer s.full.Unlock()
	rep := SyncReport{Started: time.Now().UTC()}
	var failed []error
	for _, typ := range Types {
		if err := s.syncType(ctx, typ, &rep); err != nil {
			if ctx.Err() != nil {
				failed = append(failed, ctx.Err())
				break
			}
			failed = append(failed, fmt.Errorf("%s: %w", typ, err))
		}
	}
	rep.Finished = time.Now().UTC()
	err := errors.Join(failed...)
	if err != nil {
		rep.Error = err.Error()
	}
	s.mu.Lock()
	s.last = rep
	s.mu.Unlock()
	return rep, err
}

func (s *Syncer) syncType(ctx context.Context, typ string, rep *SyncReport) error {
	seen := map[string]bool{}
	pos := ""
	for {
		items, more, err := s.src.list(ctx, typ, narrow{}, pos, s.cfg.PageSize)
		if err != nil {
			return err
		}
		written, err := s.putPage(ctx, typ, items)
		if err != nil {
			return err
		}
		rep.Written += written
		rep.Unchanged += len(items) - written
		for _, it := range items {
			seen[it.hid] = true
			pos = it.after
		}
		if !more || len(items) == 0 {
			break
		}
	}
	// What was synced before and is not listed now: confirm with Healthie
	// record by record (a listing by offset can skip a record when another
	// is deleted while it runs) before deleting.
	prefix := []byte(typ + "/")
	var missing []string
	err := s.st.View(ctx, func(tx *store.Tx) error {
		return tx.KV(syncBucket).Scan(prefix, func(k, _ []byte) (bool, error) {
			if !bytes.HasPrefix(k, prefix) {
				return false, nil
			}
			if hid := string(k[len(prefix):]); !seen[hid] {
				missing = append(missing, hid)
			}
			return true, nil
		})
	})
	if err != nil {
		return err
	}
	for _, hid := range missing {
		body, err := s.src.read(ctx, typ, hid)
		switch {
		case errs.Is(err, errs.NotFound), errs.Is(err, errs.Gone):
			if err := s.remove(ctx, typ, hid); err != nil {
				return err
			}
			rep.Deleted++
		case err != nil:
			return err
		default:
			if written, err := s.put(ctx, typ, hid, body); err != nil {
				return err
			} else if written {
				rep.Written++
			}
		}
	}
	return nil
}

// kinds maps a webhook's subject to the FHIR types its record becomes.
var kinds = map[string][]string{
	"User":        {"Patient", "Practitioner", "PractitionerRole"},
	"Appointment": {"Appointment"},
	"Policy":      {"Coverage"},
	"Cms1500":     {"Claim"},
}

// Refresh reads one Healthie record (kind User, Appointment, Policy or
// Cms1500) and writes what it maps to into the local store, or deletes it
// there when Healthie no longer has it. It returns the references of the
// local resources written or deleted.
func (s *Syncer) Refresh(ctx context.Context, kind, hid string) ([]string, error) {
	types, ok := kinds[kind]
	if !ok {
		return nil, errs.E("healthie.refresh", errs.Invalid, fmt.Sprintf("%q is not a Healthie record kind the facade serves", kind))
	}
	var changed []string
	present := false
	for _, typ := range types {
		body, err := s.src.read(ctx, typ, hid)
		switch {
		case errs.Is(err, errs.NotFound), errs.Is(err, errs.Gone):
			continue
		case err != nil:
			return changed, err
		}
		present = true
		written, err := s.put(ctx, typ, hid, body)
		if err != nil {
			return changed, err
		}
		if written {
			changed = append(changed, typ+"/"+IDPrefix+hid)
		}
		if typ == "Patient" {
			break // a patient is not also a provider
		}
	}
	if present {
		return changed, nil
	}
	for _, typ := range types {
		deleted, err := s.removed(ctx, typ, hid)
		if err != nil {
			return changed, err
		}
		if deleted {
			changed = append(changed, typ+"/"+IDPrefix+hid)
		}
	}
	return changed, nil
}

// foreign says why doc, a copy of a Healthie record, may not be written
// over what its id holds, or "" when it may: sync writes only over copies
// of the same record (the same meta.source), live or deleted (a deleted
// resource keeps its owner: its last live version decides).
func foreign(tx *store.Tx, doc *store.Doc) string {
	v, err := tx.Read(doc.Type, doc.ID)
	switch {
	case v == nil:
		return ""
	case errs.Is(err, errs.Gone):
		for vid := v.VersionID - 1; ; vid-- {
			if vid < 1 {
				return ""
			}
			if lv, err := tx.VRead(doc.Type, doc.ID, vid); err == nil {
				v = lv
				break
			}
		}
	case err != nil:
		return "cannot be read"
	}
	var stored struct {
		Meta struct {
			Source string `json:"source"`
		} `json:"meta"`
	}
	_ = json.Unmarshal(v.JSON, &stored)
	want, _ := doc.Map["meta"].(map[string]any)["source"].(string)
	if stored.Meta.Source != want {
		return "holds a resource that is not a copy of this Healthie record"
	}
	return ""
}

// put writes a mapped resource unless the store has it unchanged; it
// reports whether it wrote.
func (s *Syncer) put(ctx context.Context, typ, hid string, body []byte) (bool, error) {
	n, err := s.putPage(ctx, typ, []listed{{hid: hid, json: body}})
	return n == 1, err
}

// putPage writes the resources of one Healthie page that changed, in one
// transaction (one commit per page rather than per resource), and returns
// how many it wrote.
func (s *Syncer) putPage(ctx context.Context, typ string, items []listed) (int, error) {
	const op = "healthie.sync"
	type prepared struct {
		key []byte
		sum [sha256.Size]byte
		doc *store.Doc
	}
	docs := make([]prepared, len(items))
	for i, it := range items {
		doc, err := s.fs.ParseResource(it.json, typ)
		if err != nil {
			return 0, errs.E(op, errs.Internal, fmt.Sprintf("the %s mapped from Healthie record %s is not valid FHIR", typ, it.hid), err)
		}
		docs[i] = prepared{[]byte(typ + "/" + it.hid), sha256.Sum256(it.json), doc}
	}
	written := 0
	err := s.st.Write(syncContext(ctx), func(tx *store.Tx) error {
		written = 0
		kv := tx.KV(syncBucket)
		for _, p := range docs {
			if bytes.Equal(kv.Get(p.key), p.sum[:]) {
				if _, err := tx.Read(typ, p.doc.ID); err == nil {
					continue
				}
			}
			if why := foreign(tx, p.doc); why != "" {
				// Sync writes only over its own copies: the resource there
				// stays, this record is not copied, the rest of the page is.
				s.log.Warn("healthie: a Healthie record is not copied to the local store: its id "+why,
					"resource", typ+"/"+p.doc.ID)
				continue
			}
			d := &store.Doc{Type: typ, ID: p.doc.ID, Map: p.doc.Map, JSON: p.doc.JSON}
			if _, err := s.fs.Put(tx, d, 0); err != nil {
				return errs.E(op, fmt.Sprintf("%s/%s could not be written to the local store", typ, p.doc.ID), err)
			}
			written++
			if err := kv.Put(p.key, p.sum[:]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, errs.E(op, err)
	}
	return written, nil
}

// remove deletes the local copies of a record (all of a user's types).
func (s *Syncer) remove(ctx context.Context, typ, hid string) error {
	_, err := s.removed(ctx, typ, hid)
	return err
}

func (s *Syncer) removed(ctx context.Context, typ, hid string) (bool, error) {
	deleted := false
	err := s.st.Write(syncContext(ctx), func(tx *store.Tx) error {
		deleted = false
		if err := tx.KV(syncBucket).Delete([]byte(typ + "/" + hid)); err != nil {
			return err
		}
		v, err := tx.Delete(typ, IDPrefix+hid, 0)
		deleted = v != nil
		return err
	})
	if err != nil {
		return false, errs.E("healthie.sync", fmt.Sprintf("%s/%s%s could not be deleted from the local store", typ, IDPrefix, hid), err)
	}
	return deleted, nil
}
