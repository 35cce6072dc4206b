package bulk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/lease"
	"github.com/p2pserver/p2pserver/internal/slots"
	"github.com/p2pserver/p2pserver/mdm"
)

// Canonical OperationDefinitions, as the CapabilityStatement names them
// (PDex STU 2.1 pdex-payer-access-server; Bulk Data Access STU 2; ATR).
const (
	ExportDefinition          = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
	PatientExportDefinition   = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
	GroupExportDefinition     = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
	DataExportDefinition      = "http://hl7.org/fhir/us/davinci-atr/OperationDefinition/davinci-data-export"
	BulkMemberMatchDefinition = "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/BulkMemberMatch"
	// PayerToPayer is the exportType of a payer-to-payer
	// $davinci-data-export (PDex STU 2.1).
	PayerToPayer = "hl7.fhir.us.davinci-pdex#payertopayer"
)

// Config sets up an Exporter.
type Config struct {
	// Dir is the folder the output files are written under, one
	// sub-folder per job (-export-dir).
	Dir string
	// Retention is how long a finished job's files stay (-export-retention);
	// default 24 h.
	Retention time.Duration
	// Workers is how many jobs run at once; default 2.
	Workers int
	// Slots, when set, is the pool of work slots the Bulk Data jobs share
	// with the other job runners (batch jobs): a slice runs only with a
	// slot, and waiting runners get one in turn. Nil: only Workers bounds
	// them.
	Slots *slots.Slots
	// PerClient is how many unfinished jobs one client may have; a kick-off
	// beyond it is refused with 429 (-export-per-client); default 2.
	PerClient int
	// Slice is how many resources a job writes before it checkpoints and
	// lets the next job run; default 5000.
	Slice int
	// FileResources is the most resources one output file holds; default
	// 100,000.
	FileResources int64
	// RetryAfter is what a status poll of an unfinished job says; default
	// 2 s.
	RetryAfter time.Duration
	// Sweep is how often expired jobs are looked for; default one minute.
	Sweep time.Duration
	// MaxBody bounds a $bulk-member-match request; default 32 MiB.
	MaxBody int64
	// Organization returns the organizationId a backend client was
	// registered with ("" when none, or the client is unknown): a
	// $bulk-member-match Consent whose recipient actor names another
	// organization cannot be honoured for that client. Nil: not checked.
	Organization func(ctx context.Context, clientID string) string
	// Leases gives each job to one process at a time among those sharing
	// the database (and the export folder), and the sweep to one of them
	// per period; nil: the Exporter makes its own and releases it on
	// Close.
	Leases *lease.Manager
	// Now is the clock; default time.Now.
	Now    func() time.Time
	Logger *slog.Logger

	// afterSlice, in tests, runs after each slice with the job as
	// checkpointed and the slice's context.
	afterSlice func(ctx context.Context, j *Job)
}

// Exporter runs Bulk Data exports ($export at system, Patient and Group
// level, Group/{id}/$davinci-data-export) and $bulk-member-match as
// durable jobs, and serves their status, manifests and files (Bulk Data
// Access STU 2). Build it with New, add it to a FHIR server with Register,
// start its workers with Start and stop them with Close.
type Exporter struct {
	cfg   Config
	srv   *fhir.Server
	st    *store.Store
	match *mdm.MemberMatch
	log   *slog.Logger

	leases    *lease.Manager
	ownLeases bool
	sweeper   *lease.Periodic

	mu      sync.Mutex
	queue   []string
	queued  map[string]bool
	running map[string]context.CancelFunc
	held    map[string]*lease.Lease // the jobs' leases this process holds
	wake    chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// New builds an Exporter over srv's store; mm decides the matches of
// $bulk-member-match (nil: the operation is not offered).
func New(srv *fhir.Server, mm *mdm.MemberMatch, cfg Config) (*Exporter, error) {
	if cfg.Dir == "" {
		return nil, errors.New("bulk: the export folder is required")
	}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("bulk: export folder: %w", err)
	}
	if cfg.Retention <= 0 {
		cfg.Retention = 24 * time.Hour
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 2
	}
	if cfg.PerClient <= 0 {
		cfg.PerClient = 2
	}
	if cfg.Slice <= 0 {
		cfg.Slice = 5000
	}
	if cfg.FileResources <= 0 {
		cfg.FileResources = 100_000
	}
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = 2 * time.Second
	}
	if cfg.Sweep <= 0 {
		cfg.Sweep = time.Minute
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 32 << 20
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	e := &Exporter{cfg: cfg, srv: srv, st: srv.Store(), match: mm, log: cfg.Logger, leases: cfg.Leases,
		queued: map[string]bool{}, running: map[string]context.CancelFunc{}, held: map[string]*lease.Lease{}, wake: make(chan struct{}, 1)}
	if e.leases == nil {
		e.leases, e.ownLeases = lease.New(e.st, lease.Config{Now: cfg.Now, Logger: cfg.Logger}), true
	}
	e.sweeper = e.leases.Periodic("bulk/sweep", cfg.Sweep, 0, func(ctx context.Context) error {
		e.sweep(ctx)
		return nil
	})
	return e, nil
}

// jobLease is the lease key of job id.
func jobLease(id string) string { return "bulk/" + id }

func (e *Exporter) now() time.Time { return e.cfg.Now().UTC().Truncate(time.Millisecond) }

// jobDir is the folder of a job's files.
func (e *Exporter) jobDir(id string) string { return filepath.Join(e.cfg.Dir, id) }

// Start resumes the unfinished jobs where their checkpoints say, deletes
// the expired ones, and starts the workers. They run until ctx ends or
// Close is called.
//
// A job is worked only under its lease (see package lease), taken at its
// first slice here and released when it ends; each checkpoint checks it,
// and no file is written without it. Every Leases.Scan the workers look
// for unfinished jobs no process holds (made through another process, or
// left by one that died). The sweep of expired jobs runs in one process
// per period. Several processes must share the export folder (-export-dir
// on a shared volume): a job's files are written by whichever process
// works it and served by whichever answers.
func (e *Exporter) Start(ctx context.Context) error {
	e.mu.Lock()
	e.ctx, e.cancel = context.WithCancel(ctx)
	e.mu.Unlock()
	var jobs []*Job
	if err := e.st.View(ctx, func(tx *store.Tx) (err error) {
		jobs, err = allJobs(tx)
		return err
	}); err != nil {
		return fmt.Errorf("bulk: list jobs: %w", err)
	}
	resumed := 0
	_ = e.st.View(ctx, func(tx *store.Tx) error {
		for _, j := range jobs {
			// Those another process holds are its own to finish.
			if j.active() && e.leases.Free(tx, jobLease(j.ID)) {
				e.enqueue(j.ID)
				resumed++
			}
		}
		return nil
	})
	if resumed > 0 {
		e.log.Info("bulk: resuming unfinished jobs", "jobs", resumed)
	}
	if e.ownLeases {
		e.leases.Start(e.ctx)
	}
	e.sweeper.RunIfDue(ctx)
	e.sweeper.Start(e.ctx)
	for range e.cfg.Workers {
		e.wg.Add(1)
		go e.worker()
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		t := time.NewTicker(e.leases.Scan())
		defer t.Stop()
		for {
			select {
			case <-e.ctx.Done():
				return
			case <-t.C:
				e.scan(e.ctx)
			}
		}
	}()
	return nil
}

// scan queues the unfinished jobs that no process holds.
func (e *Exporter) scan(ctx context.Context) {
	var free []string
	_ = e.st.View(ctx, func(tx *store.Tx) error {
		jobs, err := allJobs(tx)
		for _, j := range jobs {
			if j.active() && !e.leases.Holding(jobLease(j.ID)) && e.leases.Free(tx, jobLease(j.ID)) {
				free = append(free, j.ID)
			}
		}
		return err
	})
	for _, id := range free {
		e.enqueue(id)
	}
}

// lease returns the lease this process holds on job id, taking it if it
// is free; nil when another process holds it.
func (e *Exporter) lease(ctx context.Context, id string) (*lease.Lease, error) {
	e.mu.Lock()
	l := e.held[id]
	e.mu.Unlock()
	if l != nil && l.Context().Err() == nil {
		return l, nil
	}
	l, err := e.leases.Acquire(ctx, jobLease(id))
	if err != nil || l == nil {
		return nil, err
	}
	e.mu.Lock()
	e.held[id] = l
	e.mu.Unlock()
	return l, nil
}

// heldLease is the lease this process holds on job id, nil if none.
func (e *Exporter) heldLease(id string) *lease.Lease {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.held[id]
}

// letGo forgets job id's lease, releasing it unless the job's last write
// did or the Exporter is stopping (then Close hands it over, or it
// expires if the process dies).
func (e *Exporter) letGo(id string) {
	e.mu.Lock()
	l := e.held[id]
	delete(e.held, id)
	e.mu.Unlock()
	if l != nil && l.Context().Err() == nil && e.ctx.Err() == nil {
		_ = l.Release(e.ctx)
	}
}

// Close stops the workers and waits for them; a job stays at its last
// checkpoint and resumes at the next Start.
func (e *Exporter) Close() error {
	e.mu.Lock()
	if e.cancel != nil {
		e.cancel()
	}
	e.mu.Unlock()
	e.sweeper.Close()
	e.wg.Wait()
	if e.ownLeases {
		return e.leases.Close()
	}
	return nil
}

// enqueue makes job id runnable (once).
func (e *Exporter) enqueue(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.queued[id] {
		return
	}
	e.queued[id] = true
	e.queue = append(e.queue, id)
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// next takes the job at the head of the queue; jobs take turns (each
// runs one slice, then goes to the back), so that one large export does
// not hold back the others.
func (e *Exporter) next() (string, context.Context, bool) {
	for {
		e.mu.Lock()
		if e.ctx.Err() != nil {
			e.mu.Unlock()
			return "", nil, false
		}
		if len(e.queue) > 0 {
			id := e.queue[0]
			e.queue = e.queue[1:]
			delete(e.queued, id)
			ctx, cancel := context.WithCancel(e.ctx)
			e.running[id] = cancel
			e.mu.Unlock()
			return id, ctx, true
		}
		ctx := e.ctx
		e.mu.Unlock()
		select {
		case <-ctx.Done():
			return "", nil, false
		case <-e.wake:
		}
	}
}

func (e *Exporter) worker() {
	defer e.wg.Done()
	for {
		id, ctx, ok := e.next()
		if !ok {
			return
		}
		if err := e.cfg.Slots.Acquire(ctx); err != nil {
			e.mu.Lock()
			delete(e.running, id)
			e.mu.Unlock()
			return
		}
		more := e.slice(ctx, id)
		e.cfg.Slots.Release()
		if e.cfg.afterSlice != nil {
			var j *Job
			_ = e.st.View(ctx, func(tx *store.Tx) (err error) {
				j, err = getJob(tx, id)
				return err
			})
			if j != nil {
				e.cfg.afterSlice(ctx, j)
			}
		}
		e.mu.Lock()
		if cancel := e.running[id]; cancel != nil {
			cancel()
		}
		delete(e.running, id)
		e.mu.Unlock()
		if more && e.ctx.Err() == nil {
			e.enqueue(id)
		} else if !more {
			e.letGo(id)
		}
		// Wake another worker if work is left.
		e.mu.Lock()
		if len(e.queue) > 0 {
			select {
			case e.wake <- struct{}{}:
			default:
			}
		}
		e.mu.Unlock()
	}
}

// stopRun cancels a job's slice under way in this process, if any.
func (e *Exporter) stopRun(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if cancel := e.running[id]; cancel != nil {
		cancel()
	}
	if e.queued[id] {
		delete(e.queued, id)
		for i, q := range e.queue {
			if q == id {
				e.queue = append(e.queue[:i], e.queue[i+1:]...)
				break
			}
		}
	}
}

// slice runs one slice of job id; more is true when the job has work
// left.
func (e *Exporter) slice(ctx context.Context, id string) (more bool) {
	l, err := e.lease(ctx, id)
	if err != nil || l == nil {
		if err != nil && ctx.Err() == nil {
			e.log.Error("bulk: take a job's lease", "job", id, "err", err)
		}
		return false // another process works on it, or the scan finds it again
	}
	// A lost lease stops the slice under way.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(l.Context(), cancel)()
	var j *Job
	if err := e.st.View(ctx, func(tx *store.Tx) (err error) {
		j, err = getJob(tx, id)
		return err
	}); err != nil || j == nil || !j.active() {
		if err != nil && ctx.Err() == nil {
			e.log.Error("bulk: read job", "job", id, "err", err)
		}
		return false
	}
	switch j.Kind {
	case KindExport:
		more, err = e.exportSlice(ctx, j)
	case KindMatch:
		more, err = e.matchSlice(ctx, j)
	default:
		err = fmt.Errorf("unknown job kind %q", j.Kind)
	}
	if err == nil {
		return more
	}
	if ctx.Err() != nil || errors.Is(err, lease.ErrLost) {
		// Stopped (shutdown, cancel or a lost lease): the checkpoint stands.
		return false
	}
	e.log.Error("bulk: job failed", "job", id, "kind", j.Kind, "err", err)
	e.fail(j.ID, "the job stopped on an internal error; start a new one")
	return false
}

// fail marks job id failed with a reason its client may read.
func (e *Exporter) fail(id, reason string) {
	_ = e.st.Write(context.Background(), func(tx *store.Tx) error {
		if err := e.checkLease(tx, id); err != nil {
			return err
		}
		j, err := getJob(tx, id)
		if err != nil || j == nil || !j.active() {
			return err
		}
		j.State, j.Failure = StateFailed, reason
		j.Finished = e.now()
		j.Expires = j.Finished.Add(e.cfg.Retention)
		return putJob(tx, j)
	})
}

// sweep deletes the jobs whose retention has passed, with their files,
// and the folders of jobs that have no record (a cancel cut short by a
// crash).
func (e *Exporter) sweep(ctx context.Context) {
	now := e.now()
	var expired []string
	known := map[string]bool{}
	if err := e.st.View(ctx, func(tx *store.Tx) error {
		jobs, err := allJobs(tx)
		for _, j := range jobs {
			known[j.ID] = true
			if !j.active() && !j.Expires.IsZero() && !now.Before(j.Expires) {
				expired = append(expired, j.ID)
			}
		}
		return err
	}); err != nil {
		return
	}
	for _, id := range expired {
		if err := e.remove(ctx, id); err != nil {
			e.log.Error("bulk: delete expired job", "job", id, "err", err)
			continue
		}
		e.log.Info("bulk: expired job deleted with its files", "job", id)
	}
	entries, _ := os.ReadDir(e.cfg.Dir)
	for _, ent := range entries {
		if !ent.IsDir() || known[ent.Name()] || strings.HasPrefix(ent.Name(), ".") {
			continue
		}
		// A $bulk-member-match's folder is made just before its record,
		// perhaps by another process: only an old one is an orphan.
		if fi, err := ent.Info(); err != nil || now.Sub(fi.ModTime()) < orphanAge {
			continue
		}
		_ = os.RemoveAll(filepath.Join(e.cfg.Dir, ent.Name()))
	}
}

// orphanAge is how old a job folder without a record must be for the
// sweep to delete it.
const orphanAge = time.Hour

// checkLease fences a write of job id: it fails with lease.ErrLost unless
// this process holds the job's lease as tx sees it.
func (e *Exporter) checkLease(tx *store.Tx, id string) error {
	l := e.heldLease(id)
	if l == nil {
		return lease.ErrLost
	}
	return l.Check(tx)
}

// remove deletes job id's record, then its files.
func (e *Exporter) remove(ctx context.Context, id string) error {
	e.stopRun(id)
	if err := e.st.Write(ctx, func(tx *store.Tx) error { return deleteJob(tx, id) }); err != nil {
		return err
	}
	return os.RemoveAll(e.jobDir(id))
}
