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

	cmu    sync.Mutex
	cache  map[string][]*subscription // by criteria type; nil when stale
	cached bool

	wake chan struct{}

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
	if cfg.Hosts == nil {
		cfg.Hosts = &HostPolicy{}
	}
	n := &Service{
		cfg: cfg, fs: fs, st: fs.Store(), reg: fs.Store().Registry(), base: strings.TrimRight(fs.BaseURL(), "/"),
		hosts: cfg.Hosts, mailer: cfg.Mailer, cipher: cfg.Cipher, log: cfg.Logger,
		client:   cfg.Hosts.client(cfg.Timeout, cfg.Hosts.Guard()),
		wake:     make(chan struct{}, 1),
		inflight: map[uint64]bool{},
	}
	if err := n.st.Write(context.Background(), n.secureStored); err != nil {
		return nil, fmt.Errorf("notify: %w", err)
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
			n.invalidate()
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

// hook runs inside every write transaction: it keeps the Subscription
// cache current and writes the outbox entries of a matching write.
func (n *Service) hook(tx *store.Tx, ev store.Event) error {
	v := ev.Version
	if v.Type == "Subscription" {
		n.invalidate()
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
	subs, err := n.subscriptionsFor(tx, v.Type)
	if err != nil || len(subs) == 0 {
		return err
	}
	now := n.now()
	var cur, prev *Resource
	added := false
	for _, s := range subs {
		if s.ended(now) {
			continue
		}
		ok, err := tx.Match(s.query, v.ID)
		if err != nil {
			return fmt.Errorf("notify: match Subscription/%s: %w", s.id, err)
		}
		if !ok {
			continue
		}
		if s.owner != nil && !n.fs.Policy().CanSee(tx, s.owner.principal(), v) {
			// Its owner may not read this version: nothing is sent, not
			// even a ping. (Without a recorded owner the delivery fails,
			// saying why.)
			continue
		}
		held := ""
		if s.status == StatusError {
			held = fmt.Sprintf("not sent: Subscription/%s is in error; it is sent when the Subscription is re-activated (status requested)", s.id)
		}
		base := Notification{
			ID: fhir.NewID(), Subscription: s.id, Channel: s.channel, Resource: v.Type + "/" + v.ID,
			Version: v.VersionID, Event: string(ev.Op), Created: now,
		}
		switch s.channel {
		case ChannelRestHook:
			e := base
			e.Endpoint = s.endpoint
			if err := addEntry(tx, &e, held); err != nil {
				return err
			}
			added = true
		case ChannelEmail:
			if cur == nil {
				if cur, err = decodeResource(v.Type, v.ID, v.VersionID, v.LastUpdated, v.JSON); err != nil {
					return err
				}
				if ev.Previous != nil {
					p := ev.Previous
					if prev, err = decodeResource(p.Type, p.ID, p.VersionID, p.LastUpdated, p.JSON); err != nil {
						return err
					}
				}
			}
			t := n.templateFor(cur)
			if !t.Notable(prev, cur) {
				continue
			}
			seen := map[string]bool{}
			send := func(addr string, aud Audience) error {
				key := strings.ToLower(addr)
				if seen[key] {
					return nil
				}
				seen[key] = true
				e := base
				e.ID = fhir.NewID()
				e.Endpoint, e.Audience = addr, aud
				added = true
				return addEntry(tx, &e, held)
			}
			for _, a := range s.to {
				if err := send(a, AudienceSubscriber); err != nil {
					return err
				}
			}
			if s.resourceTo {
				for _, a := range t.Recipients(cur) {
					if CheckAddress(a) != nil {
						// The resource's own rules decide what it may
						// hold; an address mail cannot go to is skipped.
						n.log.Warn("notify: the resource names an address that cannot be mailed", "resource", cur.Ref(), "subscription", s.id)
						continue
					}
					if err := send(a, AudienceResource); err != nil {
						return err
					}
				}
			}
		}
	}
	if added {
		// Waking the worker for held entries costs one empty look.
		tx.AfterCommit(n.poke)
	}
	return nil
}

func (n *Service) invalidate() {
	n.cmu.Lock()
	n.cached = false
	n.cache = nil
	n.cmu.Unlock()
}

// subscriptionsFor returns the active (and error) Subscriptions whose criteria are on
// typ. The criteria are parsed once and kept until a Subscription is
// written; each one used is checked against the version in tx, so a cache
// built inside a transaction that was then rolled back is not trusted.
func (n *Service) subscriptionsFor(tx *store.Tx, typ string) ([]*subscription, error) {
	n.cmu.Lock()
	defer n.cmu.Unlock()
	for attempt := 0; attempt < 2; attempt++ {
		if !n.cached {
			c, err := n.load(tx)
			if err != nil {
				return nil, err
			}
			n.cache, n.cached = c, true
		}
		subs := n.cache[typ]
		fresh := true
		for _, s := range subs {
			v, err := tx.Read("Subscription", s.id)
			if err != nil || v.VersionID != s.version {
				fresh = false
				break
			}
		}
		if fresh {
			return subs, nil
		}
		n.cached = false
	}
	return n.cache[typ], nil
}

// load reads every active Subscription.
func (n *Service) load(tx *store.Tx) (map[string][]*subscription, error) {
	out := map[string][]*subscription{}
	ids := tx.AllIDs("Subscription")
	vs, err := tx.ReadCurrent("Subscription", ids)
	if err != nil {
		return nil, err
	}
	for _, v := range vs {
		// Subscriptions in error still match: what they would have sent is
		// kept, failed, and sent when they are re-activated.
		if v == nil || v.Deleted {
			continue
		}
		if st := statusOf(v.JSON); st != StatusActive && st != StatusError {
			continue
		}
		r, err := decodeResource(v.Type, v.ID, v.VersionID, v.LastUpdated, v.JSON)
		if err != nil {
			return nil, err
		}
		s, issues := n.decode(v.ID, v.VersionID, r.Map)
		if s.query == nil {
			n.log.Warn("notify: active Subscription ignored: its criteria do not parse", "subscription", v.ID, "issues", len(issues))
			continue
		}
		if s.owner, err = storedOwner(tx, v.ID); err != nil {
			return nil, err
		}
		out[s.query.Type] = append(out[s.query.Type], s)
	}
	return out, nil
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
func (n *Service) Start(ctx context.Context) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cancel != nil {
		return
	}
	ctx, n.cancel = context.WithCancel(ctx)
	n.done = make(chan struct{})
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
		if free := cap(slots) - len(slots); free > 0 {
			var err error
			if due, next, err = n.due(ctx, free); err != nil && ctx.Err() == nil {
				n.log.Error("notify: read the outbox", "err", err)
				next = n.now().Add(time.Second)
			}
		}
		// With every slot busy, the next look is when one frees up.
		for _, seq := range due {
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
				n.deliver(ctx, seq)
			}(seq)
		}
		wait := time.Hour
		if !next.IsZero() {
			wait = max(next.Sub(n.now()), 10*time.Millisecond)
		}
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
		return nil
	})
}
