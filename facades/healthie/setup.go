// Package healthie serves a practice's Healthie data (patients, providers,
// the organization, locations, appointments, insurance policies and CMS
// 1500 claims) as FHIR R4, read from Healthie's GraphQL API:
//
//   - the Facade, a FHIR endpoint of its own (mounted at Path) that reads
//     and searches Healthie live and writes through Healthie's mutations;
//   - the Syncer (sync mode), which also keeps a copy in the local FHIR
//     store, so the server's own searches, Subscriptions and $everything
//     see it;
//   - Webhooks, Healthie's signed webhooks at /api/webhooks/healthie, which
//     refresh the record they name in the local store.
//
// healthietest is a local Healthie for tests and development.
package healthie

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/internal/lease"
)

// Path is where the facade's FHIR endpoint is mounted on the server root.
const Path = "/facades/healthie/fhir"

// Options configure the Healthie facade.
type Options struct {
	// URL is Healthie's GraphQL endpoint (-healthie-url); required.
	URL string
	// APIKey is the Healthie API key (-healthie-api-key); required.
	APIKey string
	// WebhookSecret verifies Healthie's webhooks (-healthie-webhook-secret);
	// without it every delivery is refused with 401.
	WebhookSecret string
	// Sync turns on sync mode (-healthie-sync): the facade's resources are
	// also kept in the local FHIR store.
	Sync bool
	// SyncInterval is the time between full syncs; default 15 minutes.
	SyncInterval time.Duration
	// BaseURL is the server's public root URL (-base-url); the facade's
	// base is BaseURL+Path.
	BaseURL string
	// Timeout, MaxRetries, BaseBackoff and MaxBackoff tune the Healthie
	// client (see ClientConfig); zero takes its defaults.
	Timeout                 time.Duration
	MaxRetries              int
	BaseBackoff, MaxBackoff time.Duration
	// HTTPClient, when set, carries the requests to Healthie.
	HTTPClient *http.Client
	// Leases, in sync mode, gives the periodic full sync to one process
	// per period among those sharing the database (see SyncConfig.Leases).
	Leases *lease.Manager
	Logger *slog.Logger
}

// Healthie is the wired facade: FHIR endpoint, webhooks and (in sync mode)
// the Syncer.
type Healthie struct {
	client   *Client
	facade   *Facade
	syncer   *Syncer
	webhooks *Webhooks
	log      *slog.Logger
}

// Setup builds the facade over fs (whose store the Syncer writes in sync
// mode). It does no I/O: a Healthie that cannot be reached shows in the
// facade's answers (503) and the sync's logs, not here.
func Setup(fs *fhir.Server, opts Options) (*Healthie, error) {
	if opts.URL == "" {
		return nil, errors.New("healthie: no Healthie URL is configured (-healthie-url)")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	log := opts.Logger.With("facade", "healthie")
	c, err := NewClient(ClientConfig{URL: opts.URL, APIKey: opts.APIKey, Timeout: opts.Timeout, MaxRetries: opts.MaxRetries,
		BaseBackoff: opts.BaseBackoff, MaxBackoff: opts.MaxBackoff, HTTPClient: opts.HTTPClient, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("%w (-healthie-url, -healthie-api-key)", err)
	}
	h := &Healthie{client: c, log: log}
	if opts.Sync {
		if fs == nil {
			return nil, errors.New("healthie: sync mode needs the FHIR server")
		}
		if h.syncer, err = NewSyncer(fs, SyncConfig{Client: c, Interval: opts.SyncInterval, Leases: opts.Leases, Logger: log}); err != nil {
			return nil, err
		}
	}
	if h.facade, err = New(Config{Client: c, BaseURL: strings.TrimRight(opts.BaseURL, "/") + Path, Syncer: h.syncer, Logger: log}); err != nil {
		return nil, fmt.Errorf("%w (-base-url)", err)
	}
	h.webhooks = &Webhooks{secret: opts.WebhookSecret, syncer: h.syncer, log: log}
	if opts.WebhookSecret == "" {
		log.Warn("healthie: no webhook secret is set; webhooks will be refused (-healthie-webhook-secret)")
	}
	return h, nil
}

// Use adds middleware (the FHIR access guard) around the facade's FHIR
// routes. Call it before Handler.
func (h *Healthie) Use(mw func(http.Handler) http.Handler) { h.facade.Use(mw) }

// Handler is the facade's FHIR endpoint; mount it at Path.
func (h *Healthie) Handler() http.Handler { return h.facade.Handler() }

// Mount registers POST /webhooks/healthie on the /api router. The route
// authenticates by signature, not by the admin token.
func (h *Healthie) Mount(api chi.Router) {
	api.Method(http.MethodPost, "/webhooks/healthie", h.webhooks)
}

// Facade returns the live FHIR facade.
func (h *Healthie) Facade() *Facade { return h.facade }

// Syncer returns the Syncer, nil unless in sync mode.
func (h *Healthie) Syncer() *Syncer { return h.syncer }

// Start starts the periodic sync (sync mode); otherwise it does nothing.
func (h *Healthie) Start(ctx context.Context) {
	if h.syncer != nil {
		h.syncer.Start(ctx)
	}
}

// Close stops the sync and waits for it.
func (h *Healthie) Close() error {
	if h.syncer != nil {
		return h.syncer.Close()
	}
	return nil
}
