package notify

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/lease"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

// Config tunes a Service. The zero value of each field picks the default
// noted.
type Config struct {
	// Hosts is the rest-hook host policy; nil allows loopback only.
	Hosts *HostPolicy
	// Mailer sends emails; nil refuses email Subscriptions (and fails the
	// deliveries of email Subscriptions stored before, until one is
	// configured).
	Mailer *Mailer
	// Cipher seals the rest-hook channel.header values, which are secrets
	// (see HeaderMask); nil refuses Subscriptions with headers.
	Cipher *secrets.Cipher
	// MaxAttempts is how many times a notification is tried before it is
	// kept as failed and its Subscription set to error. Default 8.
	MaxAttempts int
	// Backoff is the wait after the first failed attempt; it doubles after
	// each further one, up to MaxBackoff, with ±20% jitter. Default 30s.
	Backoff time.Duration
	// MaxBackoff caps the wait between attempts. Default 1h.
	MaxBackoff time.Duration
	// KeepFailed is how long failed notifications stay in the outbox for
	// the admin view before they are removed. Default 30 days.
	KeepFailed time.Duration
	// Workers is how many deliveries run at once. Default 4.
	Workers int
	// Timeout bounds one rest-hook request, or one email. Default 10s.
	Timeout time.Duration
	// Logger; slog.Default when nil.
	Logger *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// MaxOutbox is the most rows the outbox holds (a write that matched
	// Subscriptions, or one notification); a write that would add one more
	// is refused with 503. Default 1,000,000.
	MaxOutbox int
	// MaxPerType is the most active Subscriptions whose criteria are on
	// one resource type; one more is refused with 422. Default 5,000.
	MaxPerType int
	// FailureLogEvery is how often delivery failures of one Subscription
	// are logged: the first at once, the others summed up per period.
	// Default 1 minute.
	FailureLogEvery time.Duration
	// Leases gives each delivery to one process at a time among those
	// sharing the database; nil: the Service makes its own and releases
	// it on Close.
	Leases *lease.Manager

	// deliverOnly, in tests, makes a second Service on a store whose
	// writes another Service already matches: it delivers, but registers
	// no hook or validator (each process has its own store hooks).
	deliverOnly bool
}

// Service matches writes against Subscriptions, keeps the outbox and
// delivers it. Build it with New before the server serves; Start the
// worker; Close it before closing the store.
type Service struct {
	cfg    Config
	fs     *fhir.Server
	st     *store.Store
	reg    *search.Registry
	base   string
	hosts  *HostPolicy
	mailer *Mailer
	cipher *secrets.Cipher
	log    *slog.Logger
	client *http.Client

	tmu       sync.RWMutex
	templates []Template

	cmu sync.Mutex
	idx *subIndex // the Subscriptions as of its generation (see index)

	failures *failureLog

	wake chan struct{}

	leases    *lease.Manager
	ownLeases bool

	mu       sync.Mutex
	inflight map[uint64]bool
	cancel   context.CancelFunc
	done     chan struct{}
}

// New builds the Service and registers it with fs: the Subscription
// validator, and the store hook that matches every write.
func New(fs *fhir.Server, cfg Config) (*Service, error) {
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 8
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = 30 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Hour
	}
	if cfg.MaxBackoff < cfg.Backoff {
		cfg.MaxBackoff = cfg.Backoff
	}
	if cfg.KeepFailed <= 0 {
		cfg.KeepFailed = 30 * 24 * time.Hour
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MaxOutbox <= 0 {
		cfg.MaxOutbox = 1_000_000
	}
	if cfg.MaxPerType <= 0 {
		cfg.MaxPerType = 5000
	}
	if cfg.FailureLogEvery <= 0 {
		cfg.FailureLogEvery = time.Minute
	}
	if cfg.Hosts == nil {
		cfg.Hosts = &HostPolicy{}
	}
	n := &Service{
		cfg: cfg, fs: fs, st: fs.Store(), reg: fs.Store().Registry(), base: strings.TrimRight(fs.BaseURL(), "/"),
		hosts: cfg.Hosts, mailer: cfg.Mailer, cipher: cfg.Cipher, log: cfg.Logger,
		client:   cfg.Hosts.client(cfg.Timeout, cfg.Hosts.Guard()),
		wake:     make(chan struct{}, 1),
		inflight: map[uint64]bool{},
		failures: newFailureLog(cfg.Logger, cfg.FailureLogEvery),
	}
	if err := n.st.Write(context.Background(), n.countRows); err != nil {
		return nil, fmt.Errorf("notify: count the outbox: %w", err)
	}
	if err := n.st.Write(context.Background(), n.secureStored); err != nil {
		return nil, fmt.Errorf("notify: %w", err)
	}
	if n.leases = cfg.Leases; n.leases == nil {
		n.leases, n.ownLeases = lease.New(n.st, lease.Config{Logger: cfg.Logger}), true
	}
	if cfg.deliverOnly {
		return n, nil
	}
	fs.AddValidator("Subscription", n.validate)
	n.st.AddHook(n.hook)
	return n, nil
}

// AddTemplate adds an email template; earlier ones take precedence.
func (n *Service) AddTemplate(t Template) {
	n.tmu.Lock()
	defer n.tmu.Unlock()
	n.templates = append(n.templates, t)
}

func (n *Service) templateFor(r *Resource) Template {
	n.tmu.RLock()
	defer n.tmu.RUnlock()
	for _, t := range n.templates {
		if t.Applies(r) {
			return t
		}
	}
	return genericTemplate{}
}

// EmailEnabled reports whether a mail server is configured.
func (n *Service) EmailEnabled() bool { return n.mailer != nil }

func (n *Service) now() time.Time { return n.cfg.Now().UTC() }

func (n *Service) poke() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// Ensure creates the Subscription doc if there is none with its id (or it
// was deleted), checked as a client's would be and stored active. When one
// exists, update may amend it (it returns true when it did) and it is
// written back; its status is left as the administrators set it. Ensure is
// how a package seeds a Subscription at start-up without duplicating it on
// every restart.
func (n *Service) Ensure(ctx context.Context, doc *store.Doc, update func(cur *store.Doc) (bool, error)) (created bool, err error) {
	const op = "notify.ensure"
	err = n.st.Write(ctx, func(tx *store.Tx) error {
		created = false
		v, err := tx.Read("Subscription", doc.ID)
		switch {
		case errs.Is(err, errs.NotFound), errs.Is(err, errs.Gone):
			d := &store.Doc{Type: doc.Type, ID: doc.ID, Map: cloneMap(doc.Map), JSON: append([]byte(nil), doc.JSON...)}
			if err := n.validate(tx, d, nil); err != nil {
				return err
			}
			created = true
			_, err = tx.Put(d, store.PutOptions{})
			return err
		case err != nil:
			return err
		}
		cur, err := n.fs.ParseResource(v.JSON, "Subscription")
		if err != nil {
			return errs.E(op, errs.Internal, err)
		}
		if o, err := storedOwner(tx, doc.ID); err != nil {
			return errs.E(op, errs.Internal, err)
		} else if o == nil {
			// Stored before owners were recorded: the server's own.
			hs, err := n.storedHeaders(tx, doc.ID)
			if err != nil {
				return errs.E(op, errs.Internal, err)
			}
			s, _ := n.decode(doc.ID, v.VersionID, cur.Map)
			if err := putOwner(tx, doc.ID, ownerOf(nil, nil, sendsDigest(s, hs))); err != nil {
				return err
			}
			if err := bumpGen(tx); err != nil {
				return err
			}
		}
		if update == nil {
			return nil
		}
		changed, err := update(cur)
		if err != nil || !changed {
			return err
		}
		if st, _ := cur.Map["status"].(string); st == StatusActive || st == StatusRequested {
			if err := n.validate(tx, cur, v); err != nil {
				return err
			}
		}
		_, err = tx.Put(cur, store.PutOptions{IfMatch: v.VersionID})
		return err
	})
	return created, err
}

func cloneMap(m map[string]any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// hook runs inside every write transaction: it marks the Subscriptions
// changed when one is written, and adds the one outbox row of a write
// that matches Subscriptions (fanned out later by the worker, see
// fanout.go).
func (n *Service) hook(tx *store.Tx, ev store.Event) error {
	v := ev.Version
	if v.Type == "Subscription" {
		if err := bumpGen(tx); err != nil {
			return err
		}
		if ev.Op == store.OpDelete {
			// A deleted Subscription keeps no secrets, and acts for no one.
			if err := n.putHeaders(tx, v.ID, nil); err != nil {
				return err
			}
			if err := putOwner(tx, v.ID, nil); err != nil {
				return err
			}
		}
		if err := n.requeue(tx, ev); err != nil {
			return err
		}
	}
	if ev.Op == store.OpDelete {
		return nil
	}
	idx, err := n.index(tx)
	if err != nil {
		return err
	}
	groups, err := n.match(tx, idx, ev)
	if err != nil || len(groups) == 0 {
		return err
	}
	return n.addEvent(tx, idx, ev, groups)
}

// requeue puts the failed notifications of a Subscription back in the
// queue when it is re-activated after an error.
func (n *Service) requeue(tx *store.Tx, ev store.Event) error {
	if ev.Op == store.OpDelete || ev.Previous == nil || statusOf(ev.Previous.JSON) != StatusError || statusOf(ev.Version.JSON) != StatusActive {
		return nil
	}
	id := ev.Version.ID
	now := n.now()
	var again []*Notification
	err := scanEntries(tx, func(e *Notification) (bool, error) {
		if e.Subscription == id && e.Status == StateFailed {
			again = append(again, e)
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	for _, e := range again {
		e.Status, e.Attempts, e.NextAttempt, e.FailedAt = StatePending, 0, now, time.Time{}
		if err := putEntry(tx, e, time.Time{}); err != nil {
			return err
		}
	}
	if len(again) > 0 {
		tx.AfterCommit(n.poke)
	}
	return nil
}

// Start starts the delivery worker; notifications left pending by an
// earlier run are delivered. Start after New, once.
//
// Each delivery is made under its lease (see package lease), taken with
// the others due in one write and released in the write that records
// the attempt, so that of several processes on the database one makes
// it. The outbox is looked at every Leases.Scan for notifications made
// by other processes or left by one that died.
func (n *Service) Start(ctx context.Context) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cancel != nil {
		return
	}
	ctx, n.cancel = context.WithCancel(ctx)
	n.done = make(chan struct{})
	if n.ownLeases {
		n.leases.Start(ctx)
	}
	go n.loop(ctx)
}

// Close stops the worker and waits for the deliveries under way; they are
// cut short and, not having been recorded, are tried again at the next
// start. Close it before the store.
func (n *Service) Close() error {
	n.mu.Lock()
	cancel, done := n.cancel, n.done
	n.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	<-done
	if n.ownLeases {
		return n.leases.Close()
	}
	return nil
}

// pruneEvery is how often failed notifications past KeepFailed are removed.
const pruneEvery = time.Hour

func (n *Service) loop(ctx context.Context) {
	defer close(n.done)
	var wg sync.WaitGroup
	defer wg.Wait()
	slots := make(chan struct{}, n.cfg.Workers)
	freed := make(chan struct{}, 1)
	timer := time.NewTimer(0)
	defer timer.Stop()
	lastPrune := time.Time{}
	for {
		if now := n.now(); now.Sub(lastPrune) >= pruneEvery {
			lastPrune = now
			if err := n.prune(ctx); err != nil && ctx.Err() == nil {
				n.log.Error("notify: prune failed notifications", "err", err)
			}
		}
		var due []uint64
		var next time.Time
		// short: the outbox had fewer notifications due than there were
		// free workers, the only time more are made from waiting writes.
		short := false
		if free := cap(slots) - len(slots); free > 0 {
			var err error
			if due, next, err = n.due(ctx, free); err != nil && ctx.Err() == nil {
				n.log.Error("notify: read the outbox", "err", err)
				next = n.now().Add(time.Second)
			}
			short = err == nil && len(due) < free
		}
		leases := n.claim(ctx, due)
		// With every slot busy, the next look is when one frees up.
		for _, seq := range due {
			l := leases[seq]
			if l == nil {
				// Another process has it, or it is no longer due.
				n.mu.Lock()
				delete(n.inflight, seq)
				n.mu.Unlock()
				continue
			}
			slots <- struct{}{}
			wg.Add(1)
			go func(seq uint64) {
				defer wg.Done()
				defer func() {
					n.mu.Lock()
					delete(n.inflight, seq)
					n.mu.Unlock()
					<-slots
					select {
					case freed <- struct{}{}:
					default:
					}
				}()
				n.deliver(ctx, seq, l)
			}(seq)
		}
		// Writes that matched Subscriptions are fanned out into
		// notifications only as fast as they are delivered: when the
		// outbox found fewer due than the workers free when it was read
		// (a worker that frees up meanwhile is no reason: the
		// notifications already made keep it busy), so that the outbox
		// holds about one chunk of them ahead of the deliveries, and the
		// fan-out takes the writer and the CPU from client writes no
		// more than the deliveries need.
		if short && n.eventsWaiting(ctx) {
			var more bool
			err := n.st.Write(ctx, func(tx *store.Tx) error {
				var err error
				more, err = n.fanOut(tx)
				return err
			})
			if err != nil && ctx.Err() == nil {
				n.log.Error("notify: fan out a write's notifications", "err", err)
			}
			if more && err == nil {
				continue
			}
		}
		n.failures.flush(n.now())
		wait := time.Hour
		if !next.IsZero() {
			wait = max(next.Sub(n.now()), 10*time.Millisecond)
		}
		// Other processes add to the outbox too: look at it now and then.
		wait = min(wait, n.cfg.FailureLogEvery, n.leases.Scan())
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-n.wake:
		case <-freed:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// due returns up to limit pending notifications whose time has come and
// that are not being delivered, marking them in flight, and when the next
// one not returned is due (zero if none is known).
func (n *Service) due(ctx context.Context, limit int) ([]uint64, time.Time, error) {
	var out []uint64
	var next time.Time
	now := n.now()
	err := n.st.View(ctx, func(tx *store.Tx) error {
		n.mu.Lock()
		defer n.mu.Unlock()
		return tx.KV(bucketDue).Scan(nil, func(k, _ []byte) (bool, error) {
			at, seq, ok := parseDueKey(k)
			if !ok {
				return true, nil
			}
			if n.inflight[seq] {
				return true, nil
			}
			if !at.After(now) && !n.leases.Free(tx, deliveryLease(seq)) {
				return true, nil // being delivered by another process
			}
			if at.After(now) || len(out) >= limit {
				next = at
				return false, nil
			}
			out = append(out, seq)
			return true, nil
		})
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	n.mu.Lock()
	for _, seq := range out {
		n.inflight[seq] = true
	}
	n.mu.Unlock()
	return out, next, nil
}

// deliveryLease is the lease key of notification seq.
func deliveryLease(seq uint64) string { return fmt.Sprintf("notify/%d", seq) }

// claim takes, in one write, the leases of the notifications seqs that
// are still pending and due; it returns them by seq.
func (n *Service) claim(ctx context.Context, seqs []uint64) map[uint64]*lease.Lease {
	if len(seqs) == 0 {
		return nil
	}
	out := map[uint64]*lease.Lease{}
	now := n.now()
	err := n.st.Write(ctx, func(tx *store.Tx) error {
		clear(out)
		for _, seq := range seqs {
			e, err := getEntry(tx, seq)
			if err != nil {
				return err
			}
			if e == nil || e.Status != StatePending || e.NextAttempt.After(now) {
				continue // delivered or rescheduled by another process
			}
			l, err := n.leases.AcquireTx(tx, deliveryLease(seq))
			if err != nil {
				return err
			}
			if l != nil {
				out[seq] = l
			}
		}
		return nil
	})
	if err != nil {
		if ctx.Err() == nil {
			n.log.Error("notify: take the leases of due notifications", "err", err)
		}
		return nil
	}
	return out
}

// eventsWaiting reports whether writes wait to be fanned out into
// notifications, so that an idle outbox costs no write.
func (n *Service) eventsWaiting(ctx context.Context) bool {
	waiting := false
	_ = n.st.View(ctx, func(tx *store.Tx) error {
		return tx.KV(bucketEvents).Scan(nil, func(_, _ []byte) (bool, error) {
			waiting = true
			return false, nil
		})
	})
	return waiting
}

// backoff is the wait after the attempts-th failed attempt: Backoff
// doubling per attempt up to MaxBackoff, with ±20% jitter so that many
// notifications failing together do not all come back at once.
func (n *Service) backoff(attempts int) time.Duration {
	d := n.cfg.Backoff
	for i := 1; i < attempts && d < n.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, n.cfg.MaxBackoff)
	jitter := time.Duration((rand.Float64()*0.4 - 0.2) * float64(d))
	return d + jitter
}

// prune removes failed notifications older than KeepFailed.
func (n *Service) prune(ctx context.Context) error {
	cutoff := n.now().Add(-n.cfg.KeepFailed)
	return n.st.Write(ctx, func(tx *store.Tx) error {
		var old []*Notification
		err := scanEntries(tx, func(e *Notification) (bool, error) {
			if e.Status == StateFailed && e.FailedAt.Before(cutoff) {
				old = append(old, e)
			}
			return len(old) < 10000, nil
		})
		if err != nil {
			return err
		}
		for _, e := range old {
			if err := deleteEntry(tx, e); err != nil {
				return err
			}
		}
		return pruneSets(tx)
	})
}
