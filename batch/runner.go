package batch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pserver/p2pserver/bulk"
	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/lease"
	"github.com/p2pserver/p2pserver/internal/netguard"
	"github.com/p2pserver/p2pserver/internal/secrets"
	"github.com/p2pserver/p2pserver/internal/slots"
	"github.com/p2pserver/p2pserver/mdm"
	"github.com/p2pserver/p2pserver/oidcservers"
)

// Config sets up a Runner. The zero value of every field means its default.
type Config struct {
	// Workers is how many pages are worked on at once (-batch-workers).
	// Jobs take turns page by page, so more jobs than workers all advance.
	// Default 4.
	Workers int
	// Slots, when set, is the pool of work slots the batch jobs share
	// with the other job runners (Bulk Data jobs): a page is worked on
	// only with a slot. Nil: only Workers bounds them.
	Slots *slots.Slots
	// VersionedReferences makes each page's Provenance target the exact
	// versions written (Type/id/_history/n) rather than the resources.
	VersionedReferences bool
	// MDMIdentifierSystem, when set, is the identifier system under which
	// the member's identifier at the source payer is added to the member
	// here, and the ingested source Patient is linked to the member. Blank:
	// nothing is added.
	MDMIdentifierSystem string
	// RequestTimeout bounds every request to a source payer (default 60s).
	RequestTimeout time.Duration
	// MaxRetries is how many times a request answered 429, 5xx or not at
	// all is retried before the job fails (default 5).
	MaxRetries int
	// RetryBase is the first backoff; it doubles with each retry (default
	// 1s). MaxRetryDelay caps the backoff and any Retry-After (default 5m).
	RetryBase, MaxRetryDelay time.Duration
	// MaxPageBytes caps a page's size (default 64 MiB).
	MaxPageBytes int64
	// MaxPages and MaxResources are the most pages (as counted in the
	// job's pagesFetched) and resources one job reads from a source payer
	// (-batch-max-pages, -batch-max-resources; defaults DefaultMaxPages and
	// DefaultMaxResources). A job whose source goes on past them fails,
	// saying so; what it wrote until then stays.
	MaxPages, MaxResources int
	// PrepWorkers is how many goroutines decode and validate one page
	// (default GOMAXPROCS).
	PrepWorkers int
	// MaxFetches caps the requests to source payers in flight at once
	// (default 8 per worker). A job waiting for a slow source holds one of
	// these, never a worker.
	MaxFetches int
	// Outbound is the policy every connection to a source payer (its FHIR
	// endpoint and its token endpoint) is checked with, on the address
	// dialled after name resolution (default netguard.Default: public
	// addresses and loopback).
	Outbound *netguard.Policy
	// Transport, when set, carries the requests to source payers instead
	// of a transport built from Outbound (tests that need their own).
	Transport http.RoundTripper
	// Leases gives each job to one process at a time among those sharing
	// the database; nil: the Runner makes its own (with the default lease
	// duration) and releases it on Close.
	Leases *lease.Manager
	Logger *slog.Logger

	// Signer signs this server's client assertions for the system access
	// of bulk exchange jobs (*auth.ClientKeys); nil: only definitions with
	// systemAuth client_secret_basic can be used.
	Signer oidcservers.AssertionSigner
	// BulkRetryFor is how long a bulk exchange job goes on trying a source
	// payer that does not answer (or answers 429, 5xx) before it fails
	// (-bulk-retry-for, default 30m); the waits between tries grow from
	// RetryBase to MaxRetryDelay.
	BulkRetryFor time.Duration
	// BulkWaitFor is how long a bulk exchange job waits for a source's
	// $bulk-member-match or export still in progress (its status URL
	// answering 202; Bulk Data sets no limit) before it cancels it there
	// and fails (-bulk-wait-for, default 24h).
	BulkWaitFor time.Duration
	// BulkMinPoll and BulkMaxPoll bound the wait between two polls of a
	// status URL: the source's Retry-After within them (defaults
	// bulk.DefaultMinPoll, bulk.DefaultMaxPoll).
	BulkMinPoll, BulkMaxPoll time.Duration
	// BulkChunk is how many lines of an export file are written in one
	// transaction with one Provenance (default 1000; fewer once they reach
	// 8 MiB): memory holds about three chunks, whatever the size of the
	// file.
	BulkChunk int
	// ScheduleCheck is how often the bulk exchange schedules are looked at
	// (default 1m); Now is the clock they run by (default time.Now).
	ScheduleCheck time.Duration
	Now           func() time.Time
}

func (c *Config) defaults() {
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 60 * time.Second
	}
	if c.MaxRetries <= 0 {
		c.MaxRetries = 5
	}
	if c.RetryBase <= 0 {
		c.RetryBase = time.Second
	}
	if c.MaxRetryDelay <= 0 {
		c.MaxRetryDelay = 5 * time.Minute
	}
	if c.MaxPageBytes <= 0 {
		c.MaxPageBytes = 64 << 20
	}
	if c.MaxPages <= 0 {
		c.MaxPages = DefaultMaxPages
	}
	if c.MaxResources <= 0 {
		c.MaxResources = DefaultMaxResources
	}
	if c.MaxFetches <= 0 {
		c.MaxFetches = 8 * c.Workers
	}
	if c.PrepWorkers <= 0 {
		c.PrepWorkers = defaultPrepWorkers()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.BulkRetryFor <= 0 {
		c.BulkRetryFor = 30 * time.Minute
	}
	if c.BulkWaitFor <= 0 {
		c.BulkWaitFor = 24 * time.Hour
	}
	if c.BulkMinPoll <= 0 {
		c.BulkMinPoll = bulk.DefaultMinPoll
	}
	if c.BulkMaxPoll <= 0 {
		c.BulkMaxPoll = bulk.DefaultMaxPoll
	}
	if c.BulkMaxPoll < c.BulkMinPoll {
		c.BulkMaxPoll = c.BulkMinPoll
	}
	if c.BulkChunk <= 0 {
		c.BulkChunk = 1000
	}
	if c.ScheduleCheck <= 0 {
		c.ScheduleCheck = time.Minute
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Definitions is where a Runner finds the OIDC server definition of a job:
// *oidcservers.Repository.
type Definitions interface {
	Get(ctx context.Context, pid int64) (oidcservers.Server, error)
}

// Runner owns the job workers. Build it with New, start it with Start,
// and stop it with Close before the store is closed.
type Runner struct {
	cfg    Config
	fhir   *fhir.Server
	st     *store.Store
	defs   Definitions
	cipher *secrets.Cipher
	linker *mdm.Linker
	log    *slog.Logger
	client *http.Client
	// bulkHTTP downloads export files: no overall timeout (a file takes
	// as long as it takes; the job's context bounds it), the header
	// timeout of client.
	bulkHTTP *http.Client

	fetches chan struct{} // slots for requests in flight

	leases    *lease.Manager
	ownLeases bool // leases was made here: Start starts it, Close closes it

	mu     sync.Mutex
	runs   map[int64]*run
	queue  []*run
	notify chan struct{}
	// scheduleNow wakes the bulk schedule loop (a schedule changed).
	scheduleNow chan struct{}
	started     bool
	ctx         context.Context
	cancel      context.CancelFunc
	wg          sync.WaitGroup
}

// run is a job in this process. It is in exactly one of these places:
// queued, held by a worker, parked while its page is fetched, or waiting
// for a retry. Only the worker holding it touches its unguarded fields.
type run struct {
	id     int64
	ctx    context.Context
	cancel context.CancelFunc
	stop   atomic.Bool
	// lease is the job's, taken at its first step; only the worker holding
	// the run touches it.
	lease *lease.Lease

	// Guarded by Runner.mu.
	timer     *time.Timer   // waiting for a retry
	fetching  string        // URL being fetched, "" when none
	result    *fetched      // a fetch's outcome, not yet claimed
	parked    bool          // waiting for the fetch: its end queues the run
	fetchDone chan struct{} // closed when the current fetch ends

	// prepared is the next page, prepared while the previous one was
	// being written.
	prepared *readyPage

	ts        *oidcservers.TokenSource
	bulk      *bulkRun // a bulk exchange's connection and open download
	attempts  int      // retries of the current request
	refreshed bool     // the current request already got a refresh after 401
}

// fetched is the outcome of one request to the source payer.
type fetched struct {
	url  string
	kind pageKind
	body []byte
	err  error
	took time.Duration
}

// readyPage is a page prepared ahead of its turn.
type readyPage struct {
	url      string
	kind     pageKind
	pg       *preparedPage
	failNext string
	err      error
}

// park is advance's answer for a job waiting on its fetch.
const park = time.Duration(-1)

// New builds a Runner that writes through srv (so the FHIR validators of
// the types it writes apply) into srv's store, finds definitions in defs,
// and seals the members' tokens with cipher. A nil cipher leaves the runner
// unable to accept jobs: member tokens are never stored in clear.
func New(srv *fhir.Server, defs Definitions, cipher *secrets.Cipher, cfg Config) (*Runner, error) {
	if srv == nil || defs == nil {
		return nil, errors.New("batch: a FHIR server and the definitions are required")
	}
	cfg.defaults()
	transport := cfg.Transport
	if transport == nil {
		guard := cfg.Outbound
		if guard == nil {
			guard = netguard.Default()
		}
		t := guard.Transport()
		t.MaxIdleConnsPerHost = cfg.Workers * 2
		t.ResponseHeaderTimeout = cfg.RequestTimeout
		transport = t
	}
	r := &Runner{
		cfg: cfg, fhir: srv, st: srv.Store(), defs: defs, cipher: cipher,
		linker: mdm.NewLinker(cfg.MDMIdentifierSystem),
		log:    cfg.Logger,
		client: &http.Client{
			Transport:     transport,
			Timeout:       cfg.RequestTimeout,
			CheckRedirect: sameOriginRedirects,
		},
		bulkHTTP:    &http.Client{Transport: transport, CheckRedirect: bulk.SameOriginRedirects},
		runs:        map[int64]*run{},
		scheduleNow: make(chan struct{}, 1),
		notify:      make(chan struct{}, 1),
		fetches:     make(chan struct{}, cfg.MaxFetches),
	}
	if r.leases = cfg.Leases; r.leases == nil {
		r.leases, r.ownLeases = lease.New(r.st, lease.Config{Logger: cfg.Logger}), true
	}
	srv.AddValidator("Task", keepAttempts)
	return r, nil
}

// sameOriginRedirects follows at most 5 redirects, all on the origin of the
// first request: a source payer cannot send the server elsewhere.
func sameOriginRedirects(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("batch: more than 5 redirects")
	}
	if !sameOrigin(req.URL, via[0].URL) {
		return fmt.Errorf("batch: redirect to another origin (%s://%s)", req.URL.Scheme, req.URL.Host)
	}
	return nil
}

// Start resumes every job that was unfinished when the server last
// stopped (from its checkpoint) and starts the workers. The workers run
// until ctx ends or Close is called.
//
// A job is worked only under its lease (see package lease): the first
// step takes it, every write of the job checks it, and the job's end
// releases it. Every Leases.Scan the workers look in the database for
// unfinished jobs that no process holds (made by another process, or left
// by one that died) and take them over from their checkpoints.
func (r *Runner) Start(ctx context.Context) error {
	r.mu.Lock()
	if r.started {
		r.mu.Unlock()
		return errors.New("batch: runner already started")
	}
	r.started = true
	// Every write the runner makes carries the mark that lets it record
	// its attempts in a Task's output (see keepAttempts).
	r.ctx, r.cancel = context.WithCancel(context.WithValue(ctx, jobWriteKey{}, true))
	r.mu.Unlock()

	var active map[int64]int64
	if err := r.st.View(ctx, func(tx *store.Tx) (err error) {
		active, err = activeJobs(tx)
		for id := range active {
			if !r.leases.Free(tx, leaseKey(id)) {
				delete(active, id) // another process's to finish
			}
		}
		return err
	}); err != nil {
		return fmt.Errorf("batch: list unfinished jobs: %w", err)
	}
	for id := range active {
		r.enqueue(id)
	}
	if len(active) > 0 {
		r.log.Info("batch: resuming unfinished jobs", "jobs", len(active))
	}
	if r.ownLeases {
		r.leases.Start(ctx)
	}
	for range r.cfg.Workers {
		r.wg.Add(1)
		go r.worker()
	}
	r.wg.Add(1)
	go r.scanLoop()
	r.wg.Add(1)
	go r.scheduleLoop()
	return nil
}

// leaseKey is the lease of job id.
func leaseKey(id int64) string { return fmt.Sprintf("batch/%d", id) }

// scanLoop looks for work every Leases.Scan until the runner stops.
func (r *Runner) scanLoop() {
	defer r.wg.Done()
	t := time.NewTicker(r.leases.Scan())
	defer t.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		}
		r.scan()
	}
}

// scan queues the unfinished jobs that no process holds, and makes the
// jobs worked here notice a stop requested through another process.
func (r *Runner) scan() {
	var free, stopping []int64
	err := r.st.View(r.ctx, func(tx *store.Tx) error {
		active, err := activeJobs(tx)
		if err != nil {
			return err
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		for id := range active {
			if rn, ok := r.runs[id]; ok {
				if !rn.stop.Load() {
					if rec, err := getJob(tx, id); err == nil && rec.Status == Stopping {
						stopping = append(stopping, id)
					}
				}
				continue
			}
			if r.leases.Free(tx, leaseKey(id)) {
				free = append(free, id)
			}
		}
		return nil
	})
	if err != nil {
		if r.ctx.Err() == nil {
			r.log.Error("batch: look for unfinished jobs", "err", err)
		}
		return
	}
	for _, id := range free {
		r.enqueue(id)
	}
	for _, id := range stopping {
		r.requestStop(id)
	}
}

// Close stops the workers and waits for them. A page being written is
// committed or not at all; jobs stay where their checkpoint says and resume
// at the next Start.
func (r *Runner) Close() error {
	r.mu.Lock()
	if r.cancel != nil {
		r.cancel()
	}
	for _, rn := range r.runs {
		if rn.timer != nil {
			rn.timer.Stop()
			rn.timer = nil
		}
	}
	r.mu.Unlock()
	r.wg.Wait()
	if r.ownLeases {
		return r.leases.Close()
	}
	return nil
}

// enqueue makes job id runnable, unless it already is in this process.
func (r *Runner) enqueue(id int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.runs[id]; ok || r.ctx == nil {
		// Not started: Start picks the job up from the database.
		return
	}
	if r.ctx.Err() != nil {
		return
	}
	rn := &run{id: id}
	rn.ctx, rn.cancel = context.WithCancel(r.ctx)
	r.runs[id] = rn
	r.pushLocked(rn)
}

func (r *Runner) pushLocked(rn *run) {
	r.queue = append(r.queue, rn)
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// pop waits for a runnable job.
func (r *Runner) pop() *run {
	for {
		r.mu.Lock()
		if len(r.queue) > 0 {
			rn := r.queue[0]
			r.queue[0] = nil
			r.queue = r.queue[1:]
			more := len(r.queue) > 0
			r.mu.Unlock()
			if more {
				select {
				case r.notify <- struct{}{}:
				default:
				}
			}
			return rn
		}
		r.mu.Unlock()
		select {
		case <-r.notify:
		case <-r.ctx.Done():
			return nil
		}
	}
}

func (r *Runner) worker() {
	defer r.wg.Done()
	for {
		rn := r.pop()
		if rn == nil {
			return
		}
		// The slot is shared with the other job runners (Config.Slots).
		if err := r.cfg.Slots.Acquire(r.ctx); err != nil {
			return
		}
		delay, done := r.advance(rn)
		r.cfg.Slots.Release()
		if r.ctx.Err() != nil {
			return
		}
		r.mu.Lock()
		switch {
		case done:
			delete(r.runs, rn.id)
			rn.cancel()
			if l := rn.lease; l != nil && l.Context().Err() == nil {
				r.mu.Unlock()
				if err := l.Release(r.ctx); err != nil && r.ctx.Err() == nil {
					r.log.Warn("batch: release a job's lease", "job", rn.id, "err", err)
				}
				r.mu.Lock()
			}
		case delay == park:
			if rn.result != nil {
				r.pushLocked(rn)
			} else {
				rn.parked = true
			}
		case delay <= 0 || rn.stop.Load():
			r.pushLocked(rn)
		default:
			rn.timer = time.AfterFunc(delay, func() {
				r.mu.Lock()
				defer r.mu.Unlock()
				if rn.timer == nil {
					return // stopped by Close or a stop request
				}
				rn.timer = nil
				r.pushLocked(rn)
			})
		}
		r.mu.Unlock()
	}
}

// claim returns the outcome of the fetch of u, if it has ended. inflight
// reports a fetch still running: the run must park until it ends. The
// outcome of a fetch of another URL (a prefetch the job no longer wants)
// is dropped.
func (r *Runner) claim(rn *run, u string, kind pageKind) (res *fetched, inflight bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if res = rn.result; res != nil {
		rn.result = nil
		if res.url == u && res.kind == kind {
			return res, false
		}
	}
	return nil, rn.fetching != ""
}

// startFetch fetches u for rn in a goroutine of its own, so that a slow
// source payer holds no worker; its end queues the run if it is parked.
func (r *Runner) startFetch(rn *run, u string, kind pageKind) {
	done := make(chan struct{})
	r.mu.Lock()
	rn.fetching, rn.fetchDone = u, done
	r.mu.Unlock()
	ts, refreshed := rn.ts, rn.refreshed
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		res := &fetched{url: u, kind: kind}
		select {
		case r.fetches <- struct{}{}:
			began := time.Now()
			res.body, res.err = r.fetch(rn.ctx, ts, u, refreshed)
			res.took = time.Since(began).Round(time.Millisecond)
			<-r.fetches
		case <-rn.ctx.Done():
			res.err = errCanceled
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		rn.fetching, rn.result = "", res
		close(done)
		if rn.parked {
			rn.parked = false
			r.pushLocked(rn)
		}
	}()
}

// fetchDone returns the channel closed when rn's fetch in flight ends, nil
// when there is none.
func (r *Runner) fetchDone(rn *run) <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rn.fetching == "" {
		return nil
	}
	return rn.fetchDone
}

// unclaim puts back a fetch outcome for the next step to handle.
func (r *Runner) unclaim(rn *run, res *fetched) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rn.result == nil {
		rn.result = res
	}
}

// requestStop makes a job in this process notice a stop request now: its
// request in flight is abandoned and a wait for a retry is cut short.
func (r *Runner) requestStop(id int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rn, ok := r.runs[id]
	if !ok {
		return
	}
	rn.stop.Store(true)
	rn.cancel() // a fetch in flight ends, and queues the run if parked
	if rn.timer != nil && rn.timer.Stop() {
		rn.timer = nil
		r.pushLocked(rn)
	}
}

// InUse reports whether a job of the OIDC server definition pid is still
// to finish; install it with oidcservers.Repository.SetInUseCheck so a
// definition cannot be deleted from under a running job.
func (r *Runner) InUse(ctx context.Context, pid int64) (bool, error) {
	busy := false
	err := r.st.View(ctx, func(tx *store.Tx) error {
		active, err := activeJobs(tx)
		for _, server := range active {
			busy = busy || server == pid
		}
		return err
	})
	return busy, err
}
