// Command p2pserver is the FHIR R4 payer-to-payer exchange server.
//
// Every flag has an environment twin P2P_<NAME> (dashes become
// underscores): -max-body and P2P_MAX_BODY. A flag given on the command
// line wins over the environment.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"

	"github.com/p2pserver/p2pserver/auth"
	"github.com/p2pserver/p2pserver/batch"
	"github.com/p2pserver/p2pserver/internal/lease"
)

// Config is everything p2pserver can be told at start-up.
type Config struct {
	Addr    string
	DB      string
	BaseURL string
	MaxBody int64
	// Limits keep one client's requests from taking the server from the
	// others (see limits.go).
	Limits   Limits
	LogLevel string
	// AdminToken is a comma-separated list of bearer tokens for admin /api writes.
	AdminToken string
	// SecretKey encrypts secrets at rest (client secrets, member tokens).
	SecretKey string
	// TrustedIssuers and TokenAudience configure bearer tokens on /fhir.
	TrustedIssuers, TokenAudience string
	// SMART Backend Services (this server's token endpoint): the
	// lifetime of its access tokens, how long one signing key signs, and
	// the algorithm of new signing keys.
	TokenLifetime, TokenKeyRotation time.Duration
	// ClientKeyRotation is how often this payer makes a new key for its
	// own client assertions to other payers (GET /api/jwks).
	ClientKeyRotation time.Duration
	TokenSigningAlg   string
	// Organization* name this payer in the Provenance it supplies.
	OrganizationName, OrganizationID, OrganizationResource string
	// BackofficeToken is a comma-separated list of bearer tokens of the
	// back-office role: it may run batch jobs, not change definitions.
	BackofficeToken string
	// Batch jobs.
	BatchWorkers int
	// BatchMaxPages and BatchMaxResources are the ceilings of one job.
	BatchMaxPages, BatchMaxResources int
	VersionedReferences              bool
	MDMIdentifierSystem              string
	// $member-match: this payer's member id system, and the HRex version
	// of its answer.
	MemberIdentifierSystem, MemberMatchHRex string
	// Bulk Data exports and $bulk-member-match: the folder of their files
	// (default: "exports" beside the database), how long finished jobs
	// stay, how many run at once, and how many one client may have.
	ExportDir                      string
	ExportRetention                time.Duration
	ExportWorkers, ExportPerClient int
	// Bulk exchange jobs (this payer requesting): how long a source that
	// does not answer is tried, how long a request still in progress
	// there is waited for, the shortest wait between status polls, and
	// the lines of an export file written per transaction.
	BulkRetryFor, BulkWaitFor, BulkMinPoll time.Duration
	BulkChunk                              int
	// Notifications.
	NotifyAdmins, MailFrom, SMTPURL, SubscriptionHosts string
	NotifyMaxAttempts                                  int
	// OutboundAllow lists the non-public address ranges outbound
	// connections (source payers, token issuers, vendors) may reach.
	OutboundAllow string
	// EligibilityConfig is the JSON file routing payers to eligibility vendors.
	EligibilityConfig string
	// Healthie facade; off when HealthieURL is empty.
	HealthieURL, HealthieAPIKey, HealthieWebhookSecret string
	HealthieSync                                       bool
	// DebugAddr, when set, serves net/http/pprof there (keep it on loopback).
	DebugAddr string
	// ShutdownGrace is how long in-flight requests get to finish on SIGTERM.
	ShutdownGrace time.Duration
	// LeaseDuration is how long a unit of background work (a job, a
	// delivery, a periodic task) stays with a process that stops renewing
	// its lease; WorkScan how often each process looks in the database for
	// work made by others.
	LeaseDuration, WorkScan time.Duration
	// CORSOrigins are the browser origins allowed to call the server
	// (scheme://host[:port], "*.example.org" wildcards, or "*"); empty: none.
	CORSOrigins []string
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "migrate" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := runMigrate(ctx, os.Args[2:], os.Stdout)
		stop()
		if errors.Is(err, flag.ErrHelp) {
			return // -h: the usage was asked for and printed
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "p2pserver migrate:", err)
			os.Exit(1)
		}
		return
	}
	cfg, err := parseConfig(os.Args[1:], os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		return // -h: the usage was asked for and printed
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "p2pserver:", err)
		os.Exit(2)
	}
	log := newLogger(cfg.LogLevel)
	slog.SetDefault(log)
	if os.Getenv("GOGC") == "" {
		// Writes allocate a lot of short-lived garbage (decoded resources,
		// index entries); collecting less often buys ~15% write throughput
		// for memory this server has to spare. GOGC in the environment wins.
		debug.SetGCPercent(400)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if os.Getenv("GOMEMLIMIT") == "" {
		go tuneHeap(ctx)
	}
	if err := run(ctx, cfg, log); err != nil {
		log.Error("p2pserver stopped", "err", err)
		os.Exit(1)
	}
}

// logLevels are the values -log-level takes.
var logLevels = map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}

// newLogger logs at level, one of logLevels (parseConfig has checked it).
func newLogger(level string) *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevels[strings.ToLower(level)]}))
}

// parseConfig reads flags, with P2P_* environment variables as defaults.
func parseConfig(args []string, getenv func(string) string) (Config, error) {
	fs := flag.NewFlagSet("p2pserver", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage:\n  p2pserver [flags]                                   serve (each flag also from P2P_<NAME> in the environment)\n  p2pserver migrate -from <database> -to <database>   copy a database between bbolt files and PostgreSQL (p2pserver migrate -h)\n\nFlags:\n")
		fs.PrintDefaults()
	}
	env := func(name, def string) string {
		if v := getenv("P2P_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))); v != "" {
			return v
		}
		return def
	}
	var envErr error
	envBool := func(name string) bool {
		v := env(name, "false")
		b, err := strconv.ParseBool(v)
		if err != nil && envErr == nil {
			envErr = fmt.Errorf("P2P_%s: %q is not true or false", strings.ToUpper(strings.ReplaceAll(name, "-", "_")), v)
		}
		return b
	}
	var cfg Config
	var maxBody, grace, workers, attempts, cors, maxPages, maxResources string
	var tokenLifetime, tokenRotation, clientRotation string
	var retention, exportWorkers, exportPerClient string
	var leaseDuration, workScan string
	var bulkRetryFor, bulkWaitFor, bulkMinPoll, bulkChunk string
	fs.StringVar(&cfg.Addr, "addr", env("addr", "127.0.0.1:8080"), "listen address (host:port)")
	fs.StringVar(&cfg.DB, "db", env("db", "data/p2pserver.db"), "database: a bbolt file (created if missing) or a postgres:// URL")
	fs.StringVar(&cfg.BaseURL, "base-url", env("base-url", ""), "public base URL of the server (default http://<the address bound>)")
	fs.StringVar(&maxBody, "max-body", env("max-body", "8MiB"), "largest request body accepted (bytes, or with KiB/MiB suffix)")
	limits := limitFlags(fs, env)
	fs.StringVar(&cfg.LogLevel, "log-level", env("log-level", "info"), "log level: debug, info, warn, error")
	fs.StringVar(&cfg.AdminToken, "admin-token", env("admin-token", ""), "comma-separated bearer tokens for admin /api writes (none: admin writes are refused)")
	fs.StringVar(&cfg.SecretKey, "secret-key", env("secret-key", ""), "32-byte key (base64 or hex) encrypting secrets at rest; comma-separate keys to rotate")
	fs.StringVar(&cfg.TrustedIssuers, "trusted-issuers", env("trusted-issuers", ""), "comma-separated issuer URLs whose JWT access tokens /fhir accepts (ISSUER=KEYFILE for a static key); empty: /fhir is open (local use only)")
	fs.StringVar(&cfg.TokenAudience, "token-audience", env("token-audience", ""), "comma-separated aud values a token must include one of (default <base-url>/fhir)")
	fs.StringVar(&tokenLifetime, "token-lifetime", env("token-lifetime", "5m"), "lifetime of the access tokens this server's token endpoint issues to backend clients (SMART Backend Services; SMART recommends 5m at most)")
	fs.StringVar(&clientRotation, "client-key-rotation", env("client-key-rotation", "720h"), "how often a new key is made for this server's client assertions to other payers (published at /api/jwks ten minutes before it signs)")
	fs.StringVar(&tokenRotation, "token-key-rotation", env("token-key-rotation", "24h"), "how long one key signs access tokens before a new one takes over (old keys stay published until their tokens expire)")
	fs.StringVar(&cfg.TokenSigningAlg, "token-signing-alg", env("token-signing-alg", "ES384"), "algorithm of new keys signing access tokens: ES384 or RS384")
	fs.StringVar(&cfg.OrganizationName, "organization-name", env("organization-name", "p2pserver"), "this payer's name in the Provenance it supplies")
	fs.StringVar(&cfg.OrganizationID, "organization-id", env("organization-id", ""), "this payer's payer id, as the transmitter agent's identifier")
	fs.StringVar(&cfg.OrganizationResource, "organization-resource", env("organization-resource", ""), "id of this payer's Organization resource, referenced by the Provenance it supplies")
	fs.StringVar(&cfg.BackofficeToken, "backoffice-token", env("backoffice-token", ""), "comma-separated bearer tokens of the back-office role (may start and read batch jobs)")
	fs.StringVar(&workers, "batch-workers", env("batch-workers", "4"), "pages of batch jobs worked on at once")
	fs.StringVar(&maxPages, "batch-max-pages", env("batch-max-pages", strconv.Itoa(batch.DefaultMaxPages)), "most pages one batch job reads from a source payer; past it the job fails")
	fs.StringVar(&maxResources, "batch-max-resources", env("batch-max-resources", strconv.Itoa(batch.DefaultMaxResources)), "most resources one batch job reads from a source payer; past it the job fails")
	fs.BoolVar(&cfg.VersionedReferences, "versioned-references", envBool("versioned-references"), "Provenance of a batch page targets the exact versions written (Type/id/_history/n)")
	fs.StringVar(&cfg.MDMIdentifierSystem, "mdm-identifier-system", env("mdm-identifier-system", ""), "identifier system under which a member's id at the source payer is added to the member here (empty: none added; the ingested source Patient is linked with the member either way)")
	fs.StringVar(&cfg.MemberIdentifierSystem, "member-identifier-system", env("member-identifier-system", ""), "identifier system of this payer's member ids, answered by $member-match after typed member numbers; a matched member without a searchable identifier gets one under it (empty: <base-url>/fhir/Patient)")
	fs.StringVar(&cfg.MemberMatchHRex, "member-match-hrex", env("member-match-hrex", "1.0.0"), "HRex version whose member-match output profile $member-match answers follow: 1.0.0 (MemberIdentifier only) or 1.1.0 (also MemberId)")
	fs.StringVar(&cfg.ExportDir, "export-dir", env("export-dir", ""), "folder of the Bulk Data export files, one sub-folder per job (default: exports beside the database file)")
	fs.StringVar(&retention, "export-retention", env("export-retention", "24h"), "how long a finished Bulk Data job and its files are kept before they are deleted")
	fs.StringVar(&exportWorkers, "export-workers", env("export-workers", "2"), "Bulk Data jobs (exports, $bulk-member-match) worked on at once; they take turns slice by slice")
	fs.StringVar(&exportPerClient, "export-per-client", env("export-per-client", "2"), "unfinished Bulk Data jobs one client may have; a kick-off beyond it answers 429 with Retry-After")
	fs.StringVar(&bulkRetryFor, "bulk-retry-for", env("bulk-retry-for", "30m"), "how long a bulk exchange job goes on trying a source payer that does not answer (or answers 429, 5xx) before it fails")
	fs.StringVar(&bulkWaitFor, "bulk-wait-for", env("bulk-wait-for", "24h"), "how long a bulk exchange job waits for a source payer's $bulk-member-match or export still in progress (its status URL answering 202) before it cancels it there and fails")
	fs.StringVar(&bulkMinPoll, "bulk-min-poll", env("bulk-min-poll", "1s"), "shortest wait between two polls of a source payer's status URL (its Retry-After is honoured above it, up to 2m)")
	fs.StringVar(&bulkChunk, "bulk-chunk", env("bulk-chunk", "1000"), "lines of an export file a bulk exchange job writes in one transaction, with one Provenance")
	fs.StringVar(&cfg.NotifyAdmins, "notify-admins", env("notify-admins", ""), "comma-separated email addresses told of every add-payer request")
	fs.StringVar(&cfg.MailFrom, "mail-from", env("mail-from", ""), "sender address of every email, e.g. \"Payer <p2p@payer.example>\"")
	fs.StringVar(&cfg.SMTPURL, "smtp-url", env("smtp-url", ""), "mail server: smtp://user:pass@host:587 (STARTTLS when offered) or smtps://...:465; empty: no email")
	fs.StringVar(&cfg.SubscriptionHosts, "subscription-hosts", env("subscription-hosts", ""), "comma-separated hosts rest-hook Subscriptions may call (host, host:port, *.domain); empty: loopback only")
	fs.StringVar(&cfg.OutboundAllow, "outbound-allow", env("outbound-allow", "loopback"), "non-public address ranges that connections to source payers, token issuers, vendors and the mail server may reach after DNS resolution: loopback, private, link-local, CIDRs, or none (public addresses only)")
	fs.StringVar(&attempts, "notify-max-attempts", env("notify-max-attempts", "8"), "delivery attempts of a notification before its Subscription is set to error")
	fs.StringVar(&cfg.EligibilityConfig, "eligibility-config", env("eligibility-config", ""), "JSON file routing payers to eligibility vendors, with the vendors' credentials; empty: eligibility requests are refused")
	fs.StringVar(&cfg.HealthieURL, "healthie-url", env("healthie-url", ""), "Healthie GraphQL endpoint; serves the Healthie facade at /facades/healthie/fhir (empty: off)")
	fs.StringVar(&cfg.HealthieAPIKey, "healthie-api-key", env("healthie-api-key", ""), "Healthie API key")
	fs.StringVar(&cfg.HealthieWebhookSecret, "healthie-webhook-secret", env("healthie-webhook-secret", ""), "secret verifying Healthie's webhook signatures (empty: every webhook is refused)")
	fs.BoolVar(&cfg.HealthieSync, "healthie-sync", envBool("healthie-sync"), "also keep the Healthie facade's resources in the local store (searches, Subscriptions, $everything see them)")
	fs.StringVar(&cfg.DebugAddr, "debug-addr", env("debug-addr", ""), "serve Go profiling (net/http/pprof) on this address, e.g. 127.0.0.1:6060; off when empty")
	fs.StringVar(&grace, "shutdown-grace", env("shutdown-grace", "30s"), "time in-flight requests get to finish on shutdown")
	fs.StringVar(&leaseDuration, "lease-duration", env("lease-duration", lease.DefaultDuration.String()), "how long a job, delivery or periodic task stays with a process that stopped renewing its lease (it died) before another process on the database takes it over")
	fs.StringVar(&workScan, "work-scan", env("work-scan", ""), "how often each process looks in the database for work made by other processes (default a tenth of -lease-duration)")
	fs.StringVar(&cors, "cors-origins", env("cors-origins", ""), "comma-separated browser origins allowed to call the server (https://portal.example.org, https://*.example.org or *); empty: none")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if envErr != nil {
		return cfg, envErr
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q: p2pserver takes only flags (-name value, or P2P_NAME in the environment; -h lists them), or the command migrate (p2pserver migrate -h)", fs.Arg(0))
	}
	if _, ok := logLevels[strings.ToLower(cfg.LogLevel)]; !ok {
		return cfg, fmt.Errorf("-log-level: %q is not a level; use debug, info, warn or error", cfg.LogLevel)
	}
	if err := checkListenAddr(cfg.Addr); err != nil {
		return cfg, fmt.Errorf("-addr: %w", err)
	}
	if cfg.DebugAddr != "" {
		if err := checkListenAddr(cfg.DebugAddr); err != nil {
			return cfg, fmt.Errorf("-debug-addr: %w", err)
		}
	}
	// Spaces around the value (an env file's trailing blank) are not part
	// of a URL or of a file name anyone means.
	cfg.DB = strings.TrimSpace(cfg.DB)
	if err := store.CheckDSN(cfg.DB); err != nil {
		return cfg, fmt.Errorf("-db: %w", err)
	}
	if !store.IsPostgres(cfg.DB) && (cfg.DB == "" || strings.HasSuffix(cfg.DB, "/") || strings.HasSuffix(cfg.DB, string(os.PathSeparator))) {
		return cfg, fmt.Errorf("-db: %q is not a file name; write the database file's path, like data/p2pserver.db", cfg.DB)
	}
	if fi, err := os.Stat(cfg.DB); err == nil && fi.IsDir() && !store.IsPostgres(cfg.DB) {
		return cfg, fmt.Errorf("-db: %s is a folder; write the database file's path inside it, like %s", cfg.DB, filepath.Join(cfg.DB, "p2pserver.db"))
	}
	var err error
	if cfg.CORSOrigins, err = parseOrigins(cors); err != nil {
		return cfg, fmt.Errorf("-cors-origins: %w", err)
	}
	if cfg.MaxBody, err = parseSize(maxBody); err != nil {
		return cfg, fmt.Errorf("-max-body: %w", err)
	}
	if cfg.Limits, err = limits(); err != nil {
		return cfg, err
	}
	if cfg.TokenLifetime, err = time.ParseDuration(tokenLifetime); err != nil || cfg.TokenLifetime < 30*time.Second || cfg.TokenLifetime > time.Hour {
		return cfg, fmt.Errorf("-token-lifetime: %q is not a duration from 30s to 1h", tokenLifetime)
	}
	if cfg.ClientKeyRotation, err = time.ParseDuration(clientRotation); err != nil || cfg.ClientKeyRotation < time.Hour {
		return cfg, fmt.Errorf("-client-key-rotation: %q is not a duration of at least 1h", clientRotation)
	}
	if cfg.TokenKeyRotation, err = time.ParseDuration(tokenRotation); err != nil || cfg.TokenKeyRotation < time.Minute {
		return cfg, fmt.Errorf("-token-key-rotation: %q is not a duration of at least 1m", tokenRotation)
	}
	if _, err := auth.ParseAlg(cfg.TokenSigningAlg); err != nil {
		return cfg, fmt.Errorf("-token-signing-alg: %w", err)
	}
	if cfg.ShutdownGrace, err = time.ParseDuration(grace); err != nil {
		return cfg, fmt.Errorf("-shutdown-grace: %w", err)
	}
	if cfg.LeaseDuration, err = time.ParseDuration(leaseDuration); err != nil || cfg.LeaseDuration < time.Second {
		return cfg, fmt.Errorf("-lease-duration: %q is not a duration of at least 1s", leaseDuration)
	}
	if workScan != "" {
		if cfg.WorkScan, err = time.ParseDuration(workScan); err != nil || cfg.WorkScan < 10*time.Millisecond || cfg.WorkScan > cfg.LeaseDuration {
			return cfg, fmt.Errorf("-work-scan: %q is not a duration from 10ms to -lease-duration", workScan)
		}
	}
	if cfg.BatchWorkers, err = strconv.Atoi(workers); err != nil || cfg.BatchWorkers < 1 {
		return cfg, fmt.Errorf("-batch-workers: %q is not a positive number", workers)
	}
	if cfg.BatchMaxPages, err = strconv.Atoi(maxPages); err != nil || cfg.BatchMaxPages < 1 {
		return cfg, fmt.Errorf("-batch-max-pages: %q is not a positive number", maxPages)
	}
	if cfg.BatchMaxResources, err = strconv.Atoi(maxResources); err != nil || cfg.BatchMaxResources < 1 {
		return cfg, fmt.Errorf("-batch-max-resources: %q is not a positive number", maxResources)
	}
	if cfg.ExportRetention, err = time.ParseDuration(retention); err != nil || cfg.ExportRetention <= 0 {
		return cfg, fmt.Errorf("-export-retention: %q is not a positive duration (e.g. 24h)", retention)
	}
	if cfg.ExportWorkers, err = strconv.Atoi(exportWorkers); err != nil || cfg.ExportWorkers < 1 {
		return cfg, fmt.Errorf("-export-workers: %q is not a positive number", exportWorkers)
	}
	if cfg.ExportPerClient, err = strconv.Atoi(exportPerClient); err != nil || cfg.ExportPerClient < 1 {
		return cfg, fmt.Errorf("-export-per-client: %q is not a positive number", exportPerClient)
	}
	if cfg.BulkRetryFor, err = time.ParseDuration(bulkRetryFor); err != nil || cfg.BulkRetryFor <= 0 {
		return cfg, fmt.Errorf("-bulk-retry-for: %q is not a positive duration (e.g. 30m)", bulkRetryFor)
	}
	if cfg.BulkWaitFor, err = time.ParseDuration(bulkWaitFor); err != nil || cfg.BulkWaitFor <= 0 {
		return cfg, fmt.Errorf("-bulk-wait-for: %q is not a positive duration (e.g. 24h)", bulkWaitFor)
	}
	if cfg.BulkMinPoll, err = time.ParseDuration(bulkMinPoll); err != nil || cfg.BulkMinPoll <= 0 || cfg.BulkMinPoll > 2*time.Minute {
		return cfg, fmt.Errorf("-bulk-min-poll: %q is not a duration from 1ms to 2m (e.g. 1s)", bulkMinPoll)
	}
	if cfg.BulkChunk, err = strconv.Atoi(bulkChunk); err != nil || cfg.BulkChunk < 1 || cfg.BulkChunk > 100000 {
		return cfg, fmt.Errorf("-bulk-chunk: %q is not a number from 1 to 100000", bulkChunk)
	}
	if cfg.NotifyMaxAttempts, err = strconv.Atoi(attempts); err != nil || cfg.NotifyMaxAttempts < 1 {
		return cfg, fmt.Errorf("-notify-max-attempts: %q is not a positive number", attempts)
	}
	if cfg.BaseURL != "" {
		u, err := url.Parse(cfg.BaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return cfg, fmt.Errorf("-base-url: %q is not an absolute http(s) URL", cfg.BaseURL)
		}
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	return cfg, nil
}

// baseURLFor is the base URL of a server listening on bound (the address
// actually bound, so port 0 becomes the port chosen) for -addr addr, when
// -base-url is not set. A host name given in -addr is kept; with no host or
// an unspecified IP (all interfaces) the links name localhost, and wildcard
// reports that -base-url should say how clients reach the server.
func baseURLFor(addr string, bound net.Addr) (base string, wildcard bool) {
	host, _, _ := net.SplitHostPort(addr)
	_, port, err := net.SplitHostPort(bound.String())
	if err != nil {
		return "http://" + bound.String(), false
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		return "http://" + net.JoinHostPort("localhost", port), true
	}
	if ip := net.ParseIP(host); ip == nil {
		return "http://" + net.JoinHostPort(host, port), false
	}
	if tcp, ok := bound.(*net.TCPAddr); ok {
		return "http://" + net.JoinHostPort(tcp.IP.String(), port), false
	}
	return "http://" + net.JoinHostPort(host, port), false
}

// checkListenAddr tells why addr cannot be listened on: it must be
// host:port (the host may be empty for every interface), the port a number
// from 0 (any free port) to 65535.
func checkListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port, like 127.0.0.1:8080 (or 127.0.0.1:0 for any free port)", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q has no port number from 0 to 65535", addr)
	}
	return nil
}

// parseOrigins reads -cors-origins: "*", or origins scheme://host[:port]
// whose host may start with "*." for any subdomain; a "*" anywhere else is
// refused.
func parseOrigins(s string) ([]string, error) {
	var out []string
	for _, o := range strings.Split(s, ",") {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		if o == "*" {
			out = append(out, o)
			continue
		}
		// The one wildcard is a whole leftmost label ("*." after the
		// scheme); a "*" anywhere else ("https://*", "https://a.*.example")
		// would widen the pattern past what it seems to say.
		plain := strings.Replace(o, "://*.", "://wildcard.", 1)
		u, err := url.Parse(plain)
		if err != nil || strings.Contains(plain, "*") || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return nil, fmt.Errorf("%q is not an origin: write scheme://host[:port], like https://portal.example.org (or https://*.example.org, or *)", o)
		}
		out = append(out, strings.TrimSuffix(o, "/"))
	}
	return out, nil
}

// debugHandler serves the Go profiler's endpoints, /debug/memory: the
// runtime's memory figures as a JSON object of metric name to value (see
// memoryMetrics), and /debug/writer: how long st's single writer has been
// held (see serveWriter).
func debugHandler(st *store.Store) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/memory", serveMemory)
	mux.HandleFunc("/debug/writer", serveWriter(st))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	return mux
}

// memoryMetrics are the runtime/metrics samples /debug/memory reports: in
// bytes, the heap's objects (live and not yet collected), the heap found
// live by the last collection, the heap goal, and all memory the runtime
// has mapped; and the heap allocations since start, in objects and in
// bytes. The database file's pages are not among them: bbolt maps the
// file, which counts in the resident set, not in the heap.
var memoryMetrics = []string{
	"/memory/classes/heap/objects:bytes",
	"/gc/heap/live:bytes",
	"/gc/heap/goal:bytes",
	"/memory/classes/total:bytes",
	"/gc/heap/allocs:objects",
	"/gc/heap/allocs:bytes",
}

func serveMemory(w http.ResponseWriter, _ *http.Request) {
	samples := make([]metrics.Sample, len(memoryMetrics))
	for i, name := range memoryMetrics {
		samples[i].Name = name
	}
	metrics.Read(samples)
	out := make(map[string]uint64, len(samples))
	for _, s := range samples {
		if s.Value.Kind() == metrics.KindUint64 {
			out[s.Name] = s.Value.Uint64()
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// writerFigures is the JSON of /debug/writer: the time the store's single
// writer has spent committing since start, in all and in its longest
// commit group (a large transaction's, typically), in seconds, and the
// writes waiting for it now.
type writerFigures struct {
	BusySeconds    float64 `json:"busy_seconds"`
	LongestSeconds float64 `json:"longest_seconds"`
	Queued         int     `json:"queued"`
}

func serveWriter(st *store.Store) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		busy, longest := st.WriterHeld()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(writerFigures{BusySeconds: busy.Seconds(), LongestSeconds: longest.Seconds(), Queued: st.Queued()})
	}
}

// parseSize reads a size in bytes: a positive whole number, alone (bytes)
// or followed by one of the units KB (1,000), MB (1,000,000), KiB (1,024),
// MiB (1,048,576) or GiB (1,073,741,824), written in exactly those cases
// (8MB is 8,000,000 bytes, 8MiB 8,388,608; 8mb is refused).
func parseSize(s string) (int64, error) {
	num, mult := s, int64(1)
	for suffix, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 1000, "MB": 1000 * 1000} {
		if strings.HasSuffix(s, suffix) {
			num, mult = strings.TrimSuffix(s, suffix), m
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	switch {
	case err != nil:
		return 0, fmt.Errorf("%q is not a size: a whole number of bytes, alone or followed by KB, MB, KiB, MiB or GiB", s)
	case n <= 0:
		return 0, fmt.Errorf("%q: the size must be positive", s)
	case n > math.MaxInt64/mult:
		return 0, fmt.Errorf("%q is too large a size", s)
	}
	return n * mult, nil
}

// run serves until ctx ends, then shuts down gracefully: the listener
// closes, in-flight requests finish, the store and database close.
func run(ctx context.Context, cfg Config, log *slog.Logger) error {
	// Listen first: the links the server writes name the address actually
	// bound (the port chosen for :0) unless -base-url says otherwise.
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	defer ln.Close()
	if cfg.BaseURL == "" {
		var wildcard bool
		cfg.BaseURL, wildcard = baseURLFor(cfg.Addr, ln.Addr())
		if wildcard {
			log.Warn("listening on every interface: links and the default token audience use "+cfg.BaseURL+
				"; set -base-url to the URL clients use to reach this server", "addr", ln.Addr().String())
		}
	}
	a, err := newApp(cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	if err := a.Start(ctx); err != nil {
		return err
	}
	srv := cfg.Limits.httpServer(a.Handler())
	srv.ErrorLog = slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(cfg.Limits.listener(ln)) }()
	if cfg.DebugAddr != "" {
		dbg := &http.Server{Addr: cfg.DebugAddr, Handler: debugHandler(a.store), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := dbg.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("debug server stopped", "err", err)
			}
		}()
		defer dbg.Close()
		log.Info("profiling enabled", "addr", cfg.DebugAddr)
	}
	log.Info("p2pserver listening", "addr", ln.Addr().String(), "fhir", cfg.BaseURL+"/fhir", "db", store.RedactDSN(cfg.DB))
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down", "grace", cfg.ShutdownGrace)
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
