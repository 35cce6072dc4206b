// Package fhir is the FHIR R4 REST layer of p2pserver: it maps the FHIR
// interactions (read, vread, create, update, delete, history, search,
// transaction/batch, operations) to store calls one to one, negotiates the
// format, and turns every error into an OperationOutcome.
package fhir

import (
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/limit"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

// Config sets up a Server.
type Config struct {
	// BaseURL is the absolute URL of the FHIR base, e.g.
	// http://127.0.0.1:8080/fhir, used in fullUrl, Location and links.
	BaseURL string
	// MaxBody is the largest request body accepted, in bytes.
	MaxBody int64
	// DefaultCount and MaxCount bound search page sizes.
	DefaultCount, MaxCount int
	// PageTTL is how long a search (or an $everything result set) stays
	// pageable after it ran.
	PageTTL time.Duration
	// SearchCacheBytes bounds, in bytes, what paging carries: a search's
	// (or type-level $everything's) parameters and self link, sealed into
	// its links' cursor, or Patient/{id}/$everything's result set (ids),
	// kept in the database until PageTTL has passed. One may take a
	// quarter of it (and a cursor at most 48 KiB, to fit a request line).
	// Default 128 MiB.
	SearchCacheBytes int64
	// Cursors seals the paging links' cursors (-secret-key): every process
	// sharing the key, and the database, answers every link. Nil: a key
	// made at start, so links are answered by this process only.
	Cursors *secrets.Cipher
	// MaxBundleEntries is the most entries a transaction or batch Bundle
	// may have; a larger one is refused with 413. Default 10,000.
	MaxBundleEntries int
	// MaxIncluded bounds the _include/_revinclude resources of one search
	// page (iterations included); past it the page says so in an outcome
	// entry. Default 5000.
	MaxIncluded int
	// Limiter bounds expensive requests at once, in total and per client
	// (see Server.Expensive); nil: no bound.
	Limiter *limit.Limiter
	// LargeBundleEntries is the entry count from which a transaction or
	// batch counts as expensive work. Default 500.
	LargeBundleEntries int
	Logger             *slog.Logger
	// Software names this server in the CapabilityStatement.
	Software, Version string
	// CORS says browser clients of other origins may call the server (the
	// CORS headers are the HTTP layer's job); the CapabilityStatement's
	// rest.security.cors reports it.
	CORS bool
}

// DefaultSearchCacheBytes is Config.SearchCacheBytes' default.
const DefaultSearchCacheBytes = 128 << 20

// DefaultMaxBundleEntries is Config.MaxBundleEntries' default.
const DefaultMaxBundleEntries = 10000

// Server serves the FHIR REST API over a store.
type Server struct {
	cfg   Config
	store *store.Store
	reg   *search.Registry
	model *spec.Model
	log   *slog.Logger
	pages *pageCache
	// policy decides every access (see package authz).
	policy *authz.Policy

	mu         sync.RWMutex
	operations []*Operation
	validators map[string][]Validator
	middleware []func(http.Handler) http.Handler
	security   *CapSecurity
	links      PatientLinks
	capJSON    []byte
	started    time.Time
	routes     []route
}

// route is a handler below the base outside the FHIR REST paths (see
// Server.Route).
type route struct {
	pattern  string
	h        http.Handler
	produces []string // media types answered besides FHIR JSON; nil: FHIR JSON only
}

// Validator checks (and may amend) a resource of one type before it is
// written: doc is the incoming resource, prev the current version (nil on
// create). It runs inside the write transaction, so it sees a consistent
// state; an error refuses the write.
type Validator func(tx *store.Tx, doc *store.Doc, prev *store.Version) error

// Operation is an extended operation ($name) that a domain package adds.
type Operation struct {
	Name string // without the $
	// Types the operation applies to at type or instance level; empty with
	// System for a system-level operation.
	Types    []string
	System   bool
	Type     bool
	Instance bool
	// Methods allowed (GET, POST); empty means POST only.
	Methods []string
	// Definition is the canonical URL of its OperationDefinition, for the
	// CapabilityStatement.
	Definition string
	// Documentation, when set, says in the CapabilityStatement what this
	// server's implementation does beyond the definition.
	Documentation string
	// Handler serves the operation. URL params "type" and "id" are set by
	// the router for type and instance levels.
	Handler http.HandlerFunc
	// Expensive operations take a slot of the server's Limiter while they
	// run (Patient/$everything, bulk kick-offs): a client with too many
	// under way gets 429, a server at its limit 503, both with
	// Retry-After.
	Expensive bool
}

// New builds a Server.
func New(st *store.Store, cfg Config) *Server {
	if cfg.MaxBody == 0 {
		cfg.MaxBody = 8 << 20
	}
	if cfg.DefaultCount == 0 {
		cfg.DefaultCount = 20
	}
	if cfg.MaxCount == 0 {
		cfg.MaxCount = 1000
	}
	if cfg.MaxIncluded == 0 {
		cfg.MaxIncluded = 5000
	}
	if cfg.PageTTL == 0 {
		cfg.PageTTL = 30 * time.Minute
	}
	if cfg.SearchCacheBytes <= 0 {
		cfg.SearchCacheBytes = DefaultSearchCacheBytes
	}
	if cfg.MaxBundleEntries <= 0 {
		cfg.MaxBundleEntries = DefaultMaxBundleEntries
	}
	if cfg.LargeBundleEntries <= 0 {
		cfg.LargeBundleEntries = 500
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Software == "" {
		cfg.Software = "p2pserver"
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	return &Server{
		cfg: cfg, store: st, reg: st.Registry(), model: st.Registry().Model(), log: cfg.Logger,
		pages:      newPageCache(st, cfg.PageTTL, cfg.SearchCacheBytes, cfg.Cursors),
		policy:     authz.New(st.Registry(), cfg.BaseURL),
		validators: map[string][]Validator{},
		started:    time.Now().UTC(),
	}
}

// Store returns the store the server writes to.
func (s *Server) Store() *store.Store { return s.store }

// BaseURL returns the FHIR base URL.
func (s *Server) BaseURL() string { return s.cfg.BaseURL }

// AddOperation registers an extended operation.
func (s *Server) AddOperation(op *Operation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.operations = append(s.operations, op)
	s.capJSON = nil
}

// AddValidator registers v for writes of resources of type typ.
func (s *Server) AddValidator(typ string, v Validator) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.validators[typ] = append(s.validators[typ], v)
}

// Use adds middleware around every FHIR route (for example access control).
// Call it before Handler.
func (s *Server) Use(mw func(http.Handler) http.Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.middleware = append(s.middleware, mw)
}

// Route adds h for the paths below the base that pattern (a chi pattern,
// e.g. "/bulkstatus/{id}") matches: URLs that are not FHIR REST
// interactions but belong to the FHIR base, such as the Bulk Data status
// and output file URLs. Its first segment must not be a resource type.
// The server's middleware (access control) applies to it. Call it before
// Handler.
func (s *Server) Route(pattern string, h http.Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.routes = append(s.routes, route{pattern: pattern, h: h})
}

// RouteProducing is Route for a path that answers in other media types
// than FHIR JSON, such as the Bulk Data output files
// (application/fhir+ndjson): an Accept header naming one of mediaTypes is
// acceptable there, as is one that accepts JSON (errors are still
// OperationOutcomes). Call it before Handler.
func (s *Server) RouteProducing(pattern string, h http.Handler, mediaTypes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.routes = append(s.routes, route{pattern: pattern, h: h, produces: mediaTypes})
}

func (s *Server) validatorsFor(typ string) []Validator {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.validators[typ]
}

// Handler returns the http.Handler for the FHIR base; mount it at the path
// of BaseURL (e.g. r.Mount("/fhir", s.Handler())).
func (s *Server) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(Recoverer)
	s.mu.RLock()
	for _, mw := range s.middleware {
		r.Use(mw)
	}
	routes := slices.Clone(s.routes)
	s.mu.RUnlock()
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, r, errs.E("fhir.route", errs.NotFound, fmt.Sprintf("no FHIR endpoint at %s", r.URL.Path)))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, r, errs.E("fhir.route", errs.MethodNotAllowed, fmt.Sprintf("%s is not supported on %s", r.Method, r.URL.Path)))
	})
	for _, rt := range routes {
		if rt.produces != nil {
			r.With(negotiate(rt.produces)).Handle(rt.pattern, rt.h)
		}
	}
	r.Group(func(r chi.Router) {
		r.Use(Negotiate)
		for _, rt := range routes {
			if rt.produces == nil {
				r.Handle(rt.pattern, rt.h)
			}
		}
		r.Get("/metadata", s.capabilities)
		r.Post("/", s.bundle)
		r.Get("/_history", s.systemHistory)
		r.HandleFunc("/{op:\\$[^/]+}", s.systemOperation)
		r.Route("/{type}", func(r chi.Router) {
			r.Use(s.knownType)
			r.Get("/", s.search)
			r.Post("/", s.create)
			r.Put("/", s.conditionalUpdate)
			r.Delete("/", s.conditionalDelete)
			r.Post("/_search", s.searchPost)
			r.Get("/_history", s.typeHistory)
			r.HandleFunc("/{op:\\$[^/]+}", s.typeOperation)
			r.Get("/{id}", s.read)
			r.Put("/{id}", s.update)
			r.Delete("/{id}", s.delete)
			r.Get("/{id}/_history", s.instanceHistory)
			r.Get("/{id}/_history/{vid}", s.vread)
			r.HandleFunc("/{id}/{op:\\$[^/]+}", s.instanceOperation)
		})
	})
	return r
}

// knownType answers 404 for a path segment that is not a resource type.
func (s *Server) knownType(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		typ := chi.URLParam(r, "type")
		if !s.model.IsResource(typ) {
			WriteError(w, r, errs.E("fhir.route", errs.NotFound, fmt.Sprintf("%q is not a resource type this server knows", typ)))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Recoverer turns a panic into a 500 OperationOutcome and a log line with
// the stack, so no input can take the server down or leak a stack. FHIR
// endpoints outside this package (the facades) use it too.
func Recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				slog.ErrorContext(r.Context(), "panic serving FHIR request", "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
				WriteError(w, r, errs.E("fhir.panic", errs.Internal))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// Negotiate refuses clients that do not accept JSON (Accept or _format)
// with 406.
func Negotiate(next http.Handler) http.Handler { return negotiate(nil)(next) }

// negotiate is Negotiate for a route that also answers in mediaTypes.
func negotiate(mediaTypes []string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !acceptable(r, mediaTypes...) {
				msg := "this server answers in FHIR JSON only (application/fhir+json); XML and other formats are not supported"
				if len(mediaTypes) > 0 {
					msg = "this URL answers in " + strings.Join(mediaTypes, ", ") + " (or FHIR JSON for errors)"
				}
				WriteError(w, r, errs.E("fhir.negotiate", errs.NotAcceptable, msg))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func (s *Server) findOperation(name string, level string, typ string) *Operation {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, op := range s.operations {
		if op.Name != name {
			continue
		}
		switch level {
		case "system":
			if op.System {
				return op
			}
		case "type", "instance":
			if (level == "type" && !op.Type) || (level == "instance" && !op.Instance) {
				continue
			}
			for _, t := range op.Types {
				if t == typ || t == "Resource" {
					return op
				}
			}
		}
	}
	return nil
}

func (s *Server) runOperation(w http.ResponseWriter, r *http.Request, level string) {
	name := strings.TrimPrefix(chi.URLParam(r, "op"), "$")
	typ := chi.URLParam(r, "type")
	op := s.findOperation(name, level, typ)
	if op == nil {
		WriteError(w, r, errs.E("fhir.operation", errs.NotFound, fmt.Sprintf("operation $%s is not supported at %s level%s", name, level, forType(typ))))
		return
	}
	methods := op.Methods
	if len(methods) == 0 {
		methods = []string{http.MethodPost}
	}
	for _, m := range methods {
		if m == r.Method {
			if op.Expensive {
				release, err := s.Expensive(r, "$"+op.Name)
				if err != nil {
					WriteError(w, r, err)
					return
				}
				defer release()
			}
			op.Handler(w, r)
			return
		}
	}
	WriteError(w, r, errs.E("fhir.operation", errs.MethodNotAllowed, fmt.Sprintf("$%s does not accept %s", name, r.Method)))
}

// Expensive takes a slot of the server's Limiter for r, for work
// described by what, or refuses: 429 when r's client (its token's subject,
// else its IP address) has too much under way, 503 when the server has.
// Call release when the work is done.
func (s *Server) Expensive(r *http.Request, what string) (release func(), err error) {
	return s.cfg.Limiter.Acquire(ClientKey(r), what)
}

// ClientKey identifies r's client for per-client limits: the subject of
// its token when it has one, else its IP address.
func ClientKey(r *http.Request) string {
	if a := AccessFrom(r.Context()); a != nil && a.Subject != "" {
		return "sub:" + a.Subject
	}
	return limit.ClientIP(r)
}

func forType(typ string) string {
	if typ == "" {
		return ""
	}
	return " for " + typ
}

func (s *Server) systemOperation(w http.ResponseWriter, r *http.Request) {
	s.runOperation(w, r, "system")
}
func (s *Server) typeOperation(w http.ResponseWriter, r *http.Request) {
	s.runOperation(w, r, "type")
}
func (s *Server) instanceOperation(w http.ResponseWriter, r *http.Request) {
	s.runOperation(w, r, "instance")
}
