package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/p2pserver/p2pserver/auth"
	"github.com/p2pserver/p2pserver/batch"
	"github.com/p2pserver/p2pserver/bulk"
	"github.com/p2pserver/p2pserver/facades/connectors"
	"github.com/p2pserver/p2pserver/facades/eligibility"
	"github.com/p2pserver/p2pserver/facades/healthie"
	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/smart"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/workflow"
	"github.com/p2pserver/p2pserver/internal/apidoc"
	"github.com/p2pserver/p2pserver/internal/httpapi"
	"github.com/p2pserver/p2pserver/internal/lease"
	"github.com/p2pserver/p2pserver/internal/netguard"
	"github.com/p2pserver/p2pserver/internal/secrets"
	"github.com/p2pserver/p2pserver/internal/slots"
	"github.com/p2pserver/p2pserver/mdm"
	"github.com/p2pserver/p2pserver/notify"
	"github.com/p2pserver/p2pserver/notify/addpayer"
	"github.com/p2pserver/p2pserver/oidcservers"
	"github.com/p2pserver/p2pserver/provenance"
)

// app is the wired server: database, store, and the HTTP routes.
type app struct {
	cfg   Config
	log   *slog.Logger
	db    store.DB
	store *store.Store
	fhir  *fhir.Server
	admin *httpapi.Authorizer
	guard *smart.Guard
	auth  *auth.Server // nil without -secret-key
	// clientKeys sign this payer's client assertions to other payers;
	// nil without -secret-key.
	clientKeys *auth.ClientKeys
	oidc       *oidcservers.API

	// leases give each job, delivery and periodic task to one process
	// among those on the database.
	leases    *lease.Manager
	notify    *notify.Service
	notifyAPI *notify.API
	runner    *batch.Runner
	exports   *bulk.Exporter
	slots     *slots.Slots // shared by the batch and Bulk Data jobs
	batchAPI  *batch.API
	elig      *eligibility.Service
	healthie  *healthie.Healthie // nil when not configured
	health    *healthCheck
}

// initialMmapSize is the address space reserved for the database file.
const initialMmapSize = 8 << 30

func newApp(cfg Config, log *slog.Logger) (*app, error) {
	// While the database cannot be reached, the store says so (once, and
	// once a minute); the workers' own errors about it are left out.
	log = slog.New(store.QuietUnreachable(log.Handler()))
	// A bbolt file's map is reserved large (address space, not memory)
	// so that the file growing does not remap it: a remap waits for every
	// read transaction to end while holding the writer, and copies every
	// node a large write has touched.
	db, err := store.OpenDB(context.Background(), cfg.DB, store.DBOptions{BoltMmapSize: initialMmapSize, Logger: log})
	if err != nil {
		return nil, err
	}
	if err := store.CheckCopied(context.Background(), db); err != nil {
		db.Close()
		return nil, err
	}
	reg := search.NewRegistry(spec.R4())
	st, err := store.Open(db, reg, log)
	if err != nil {
		db.Close()
		return nil, err
	}
	a := &app{cfg: cfg, log: log, db: db, store: st, health: newHealthCheck(st.Ping)}
	if err := a.wire(); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// wire builds each package's value with its dependencies.
func (a *app) wire() error {
	cfg, log := a.cfg, a.log
	if cfg.BaseURL == "" {
		cfg.BaseURL = "http://" + cfg.Addr
		a.cfg.BaseURL = cfg.BaseURL
	}
	base := cfg.BaseURL + "/fhir"
	var cipher *secrets.Cipher
	if cfg.SecretKey != "" {
		var err error
		if cipher, err = secrets.NewCipher(cfg.SecretKey); err != nil {
			return fmt.Errorf("-secret-key: %w", err)
		}
	}
	// Paging links' cursors are sealed with the secret key, so that every
	// process sharing it answers them.
	if cipher == nil && store.IsPostgres(cfg.DB) {
		log.Warn("no -secret-key: the paging links this process makes are sealed with a key of its own, so other processes on this database answer them 410; give every process the same -secret-key (P2P_SECRET_KEY)")
	}
	fcfg := fhir.Config{BaseURL: base, MaxBody: cfg.MaxBody, Logger: log, Version: version,
		CORS: len(cfg.CORSOrigins) > 0, Cursors: cipher}
	cfg.Limits.fhir(&fcfg)
	a.fhir = fhir.New(a.store, fcfg)
	a.leases = lease.New(a.store, lease.Config{Duration: cfg.LeaseDuration, Scan: cfg.WorkScan, Logger: log})
	log.Info("background work is leased", "owner", a.leases.Owner(), "lease", a.leases.Duration(), "scan", a.leases.Scan())

	// Access control on /fhir comes first: later middleware reads the
	// fhir.Access it sets.
	ranges, err := netguard.ParseRanges(cfg.OutboundAllow)
	if err != nil {
		return fmt.Errorf("-outbound-allow: %w", err)
	}
	// Every connection to another system (source payers, token issuers,
	// vendors) is checked on the address dialled; rest-hooks have their
	// own policy, -subscription-hosts.
	outbound := &netguard.Policy{Public: true, Allow: ranges, Setting: "-outbound-allow"}
	issuers, err := smart.ParseIssuers(cfg.TrustedIssuers)
	if err != nil {
		return fmt.Errorf("-trusted-issuers: %w", err)
	}
	a.admin, err = httpapi.NewAuthorizer(log,
		httpapi.Role{Name: "admin", Setting: "-admin-token or P2P_ADMIN_TOKEN", Tokens: httpapi.SplitTokens(cfg.AdminToken)},
		httpapi.Role{Name: "backoffice", Setting: "-backoffice-token or P2P_BACKOFFICE_TOKEN", Tokens: httpapi.SplitTokens(cfg.BackofficeToken)},
	)
	if err != nil {
		return fmt.Errorf("-admin-token, -backoffice-token: %w", err)
	}

	// SMART Backend Services: other payers' systems get tokens from this
	// server's token endpoint. Its signing keys are sealed with the
	// secret key, so without one it is off.
	var backend smart.Backend
	if cipher != nil {
		alg, _ := auth.ParseAlg(cfg.TokenSigningAlg) // checked by parseConfig
		if a.auth, err = auth.New(a.store, auth.Config{BaseURL: cfg.BaseURL, FHIRBase: base, Cipher: cipher, Leases: a.leases,
			TokenLifetime: cfg.TokenLifetime, KeyRotation: cfg.TokenKeyRotation, SigningAlg: alg,
			HTTPClient: outbound.Client(5 * time.Second), Admin: a.admin.Require("admin"), MaxBody: httpapi.DefaultMaxBody, Logger: log}); err != nil {
			return err
		}
		backend = a.auth
		if a.clientKeys, err = auth.NewClientKeys(a.store, auth.ClientKeysConfig{Cipher: cipher, Alg: alg,
			RotateEvery: cfg.ClientKeyRotation, Logger: log}); err != nil {
			return err
		}
	} else {
		log.Info("SMART Backend Services are off: the server has no -secret-key to seal the keys that sign its access tokens")
	}
	if a.guard, err = smart.New(smart.Config{BaseURL: base, Issuers: issuers, HTTPClient: outbound.Client(10 * time.Second),
		Audiences: httpapi.SplitTokens(cfg.TokenAudience), AdminTokens: httpapi.SplitTokens(cfg.AdminToken), Logger: log,
		Backend: backend}); err != nil {
		return err
	}
	a.guard.Attach(a.fhir)
	src, err := provenance.NewSource(a.store, provenance.SourceConfig{BaseURL: base,
		OrganizationName: cfg.OrganizationName, OrganizationID: cfg.OrganizationID,
		OrganizationResource: cfg.OrganizationResource, Logger: log})
	if err != nil {
		return err
	}
	src.Attach(a.fhir)
	a.fhir.EnableEverything(fhir.EverythingOptions{Withhold: mdm.Withhold})
	// The member's record includes the Patients MDM links to it (the
	// data ingested from other payers).
	a.fhir.SetPatientLinks(mdm.Linked)
	mm, err := mdm.NewMemberMatch(a.fhir, mdm.MemberMatchConfig{MaxBody: cfg.MaxBody, Logger: log, HRexVersion: cfg.MemberMatchHRex,
		MemberIdentifierSystem: cfg.MemberIdentifierSystem, SourcePayerSystem: cfg.MDMIdentifierSystem})
	if err != nil {
		return fmt.Errorf("-member-match-hrex: %w", err)
	}
	mm.Register()

	// Batch jobs and Bulk Data jobs share -batch-workers slots of work,
	// taken in turn: neither kind starves the other.
	a.slots = slots.New(cfg.BatchWorkers)

	// Bulk Data exports and $bulk-member-match, their files beside the
	// database file (under data/ on PostgreSQL) unless -export-dir says
	// otherwise.
	exportDir := cfg.ExportDir
	if exportDir == "" {
		exportDir = filepath.Join(filepath.Dir(cfg.DB), "exports")
		if store.IsPostgres(cfg.DB) {
			exportDir = filepath.Join("data", "exports")
		}
	}
	bcfg := bulk.Config{Dir: exportDir, Retention: cfg.ExportRetention,
		Workers: cfg.ExportWorkers, PerClient: cfg.ExportPerClient, Slots: a.slots, Leases: a.leases, Logger: log}
	if a.auth != nil {
		// A Consent must name the requesting payer's organization.
		bcfg.Organization = func(ctx context.Context, clientID string) string {
			c, err := a.auth.Client(ctx, clientID)
			if err != nil {
				return ""
			}
			return c.OrganizationID
		}
	}
	if a.exports, err = bulk.New(a.fhir, mm, bcfg); err != nil {
		return fmt.Errorf("-export-dir: %w", err)
	}
	a.exports.Register()

	oidcRepo, err := oidcservers.NewRepository(a.store, cipher)
	if err != nil {
		return err
	}
	a.oidc = oidcservers.NewAPI(oidcRepo, a.admin.Require("admin"), log, httpapi.DefaultMaxBody)
	a.oidc.UseClient(outbound.Client(30 * time.Second))
	if a.clientKeys != nil {
		a.oidc.UseSigner(a.clientKeys)
	}

	// Tasks: the R4 state machine for every Task, then the add-payer rules.
	workflow.Register(a.fhir, workflow.Options{})
	addpayer.Register(a.fhir)

	// Subscriptions and the outbox.
	hosts, err := notify.ParseHosts(cfg.SubscriptionHosts)
	if err != nil {
		return fmt.Errorf("-subscription-hosts: %w", err)
	}
	var mailer *notify.Mailer
	if cfg.SMTPURL != "" {
		if cfg.MailFrom == "" {
			return errors.New("-smtp-url is set but -mail-from is not: emails need a sender address")
		}
		if mailer, err = notify.NewMailer(notify.MailConfig{URL: cfg.SMTPURL, From: cfg.MailFrom, Dial: outbound.DialContext}); err != nil {
			return fmt.Errorf("-smtp-url: %w", err)
		}
	}
	if a.notify, err = notify.New(a.fhir, notify.Config{MaxOutbox: cfg.Limits.NotifyMaxOutbox, MaxPerType: cfg.Limits.MaxSubscriptionsPerType,
		Hosts: hosts, Mailer: mailer, Cipher: cipher, MaxAttempts: cfg.NotifyMaxAttempts, Leases: a.leases, Logger: log}); err != nil {
		return err
	}
	a.notifyAPI = notify.NewAPI(a.notify, a.admin.Require("admin"), log)

	// P2P batch jobs and bulk exchanges.
	bcfgJobs := batch.Config{Workers: cfg.BatchWorkers, Slots: a.slots, Outbound: outbound,
		VersionedReferences: cfg.VersionedReferences, MDMIdentifierSystem: cfg.MDMIdentifierSystem,
		MaxPages: cfg.BatchMaxPages, MaxResources: cfg.BatchMaxResources,
		BulkRetryFor: cfg.BulkRetryFor, BulkWaitFor: cfg.BulkWaitFor, BulkMinPoll: cfg.BulkMinPoll, BulkChunk: cfg.BulkChunk, Leases: a.leases, Logger: log}
	if a.clientKeys != nil {
		bcfgJobs.Signer = a.clientKeys
	}
	if a.runner, err = batch.New(a.fhir, oidcRepo, cipher, bcfgJobs); err != nil {
		return err
	}
	oidcRepo.SetInUseCheck(a.runner.InUse)
	a.batchAPI = batch.NewAPI(a.runner, a.admin.Require("admin", "backoffice"), log, httpapi.DefaultMaxBody)

	// Eligibility facade.
	ecfg := eligibility.Config{}
	if cfg.EligibilityConfig != "" {
		if ecfg, err = eligibility.LoadConfig(cfg.EligibilityConfig); err != nil {
			return fmt.Errorf("-eligibility-config: %w", err)
		}
	}
	conns, err := connectors.New(ecfg, outbound.Client(0), log)
	if err != nil {
		return fmt.Errorf("-eligibility-config: %w", err)
	}
	if a.elig, err = eligibility.New(a.fhir, ecfg, eligibility.Options{Connectors: conns, Cipher: cipher, Leases: a.leases,
		Admin: a.admin.Require("admin"), Logger: log}); err != nil {
		return fmt.Errorf("-eligibility-config: %w", err)
	}

	// Healthie practice data facade, behind the same token guard as /fhir.
	if cfg.HealthieURL != "" {
		if a.healthie, err = healthie.Setup(a.fhir, healthie.Options{URL: cfg.HealthieURL, APIKey: cfg.HealthieAPIKey, Leases: a.leases,
			WebhookSecret: cfg.HealthieWebhookSecret, Sync: cfg.HealthieSync, BaseURL: cfg.BaseURL,
			HTTPClient: outbound.Client(30 * time.Second), Logger: log}); err != nil {
			return fmt.Errorf("-healthie-url: %w", err)
		}
		a.healthie.Use(a.guard.Middleware)
	}
	return nil
}

// Start does what needs the network or background work: token issuer
// discovery, the default add-payer Subscription, and the workers of the
// outbox, the batch jobs and the eligibility checks. They run until ctx
// ends or Close is called.
func (a *app) Start(ctx context.Context) error {
	if err := a.guard.Prepare(ctx); err != nil {
		a.log.Warn("token issuer discovery failed; it is retried on first use", "err", err)
	}
	a.leases.Start(ctx)
	if a.auth != nil {
		if err := a.auth.Start(ctx); err != nil {
			return err
		}
		if err := a.clientKeys.Start(ctx); err != nil {
			return err
		}
	}
	if err := addpayer.Setup(ctx, a.notify, httpapi.SplitTokens(a.cfg.NotifyAdmins), a.log); err != nil {
		return err
	}
	a.notify.Start(ctx)
	if err := a.runner.Start(ctx); err != nil {
		return err
	}
	if err := a.exports.Start(ctx); err != nil {
		return err
	}
	a.elig.Start(ctx)
	if a.healthie != nil {
		a.healthie.Start(ctx)
	}
	return nil
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Handler is the whole HTTP surface.
func (a *app) Handler() http.Handler {
	r := chi.NewRouter()
	r.Method(http.MethodGet, "/fhir"+smart.WellKnownPath(), a.guard.ConfigurationHandler())
	r.Mount("/fhir", a.fhir.Handler())
	api := httpapi.NewRouter(a.log)
	apidoc.Mount(api, "/api")
	a.oidc.Mount(api)
	a.batchAPI.Mount(api)
	a.notifyAPI.Mount(api)
	a.elig.Mount(api)
	if a.auth != nil {
		r.Mount("/auth", a.auth.Handler())
		a.auth.MountAPI(api)
		api.Method(http.MethodGet, auth.ClientJWKSPath, a.clientKeys)
	} else {
		off := auth.Disabled{Reason: "SMART Backend Services are off on this server: it has no -secret-key (P2P_SECRET_KEY) to seal the keys that sign access tokens"}
		r.Mount("/auth", off.Handler())
		off.MountAPI(api)
		api.Get(auth.ClientJWKSPath, func(w http.ResponseWriter, r *http.Request) {
			httpapi.WriteError(w, httpapi.Errorf(http.StatusNotFound, httpapi.CodeNotFound, "this server has no client keys: it has no -secret-key (P2P_SECRET_KEY) to seal them"))
		})
	}
	if a.healthie != nil {
		r.Mount(healthie.Path, a.healthie.Handler())
		a.healthie.Mount(api)
	}
	r.Mount("/api", api)
	// GET and HEAD, which every general-purpose server supports (RFC 9110
	// section 9.1); net/http sends no body for HEAD.
	r.Get("/healthz", a.healthz)
	r.Head("/healthz", a.healthz)
	r.Get("/", a.home)
	r.Head("/", a.home)
	return a.cors(r)
}

func (a *app) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if err := a.health.check(r.Context()); err != nil {
		a.log.Error("health check failed", "err", err)
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"status":"unavailable"}`))
		return
	}
	_, _ = w.Write([]byte(`{"status":"ok"}`))
}

// Close stops the workers, then the store's writer, and closes the
// database cleanly.
func (a *app) Close() error {
	stop := func(what string, c interface{ Close() error }) {
		if err := c.Close(); err != nil {
			a.log.Error("stop "+what, "err", err)
		}
	}
	if a.healthie != nil {
		stop("Healthie sync", a.healthie)
	}
	if a.elig != nil {
		stop("eligibility checks", a.elig)
	}
	if a.clientKeys != nil {
		stop("client key rotation", a.clientKeys)
	}
	if a.runner != nil {
		stop("batch jobs", a.runner)
	}
	if a.exports != nil {
		stop("Bulk Data jobs", a.exports)
	}
	if a.notify != nil {
		stop("notifications", a.notify)
	}
	if a.auth != nil {
		stop("backend services", a.auth)
	}
	if a.leases != nil {
		// After the workers: what they still hold is handed over at once.
		stop("leases", a.leases)
	}
	a.store.Close()
	return a.db.Close()
}
