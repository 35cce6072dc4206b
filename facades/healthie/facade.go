package healthie

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// Config sets up the live Facade.
type Config struct {
	// Client reaches Healthie.
	Client *Client
	// BaseURL is the absolute URL the facade is mounted at, e.g.
	// http://127.0.0.1:8080/facades/healthie/fhir; it is used in fullUrl,
	// Location and paging links.
	BaseURL string
	// Syncer, when set (sync mode), gets every resource the facade writes
	// to Healthie, so the local store has it at once rather than at the
	// next webhook or sync.
	Syncer *Syncer
	// MaxBody bounds request bodies (default 1 MiB).
	MaxBody int64
	// DefaultCount and MaxCount bound search pages (defaults 20 and 100).
	DefaultCount, MaxCount int
	Logger                 *slog.Logger
}

// Facade serves Healthie's practice data as a FHIR R4 endpoint of its own:
// read and search of Patient, Practitioner, PractitionerRole, Organization,
// Location, Appointment, Coverage and Claim, fetched live from Healthie;
// POST Patient, PUT Patient/{id}, POST Appointment and DELETE
// Appointment/{id} through Healthie's mutations. Anything else is refused
// with an OperationOutcome, and the CapabilityStatement lists exactly this.
// Resources carry the facade's meta.tag, meta.source naming the Healthie
// record, and the Healthie id as their id.
type Facade struct {
	cfg   Config
	src   source
	model *spec.Model
	log   *slog.Logger

	mu         sync.Mutex
	middleware []func(http.Handler) http.Handler
	capJSON    []byte
}

// New builds the facade.
func New(cfg Config) (*Facade, error) {
	if cfg.Client == nil {
		return nil, errors.New("healthie: the facade needs a client")
	}
	u, err := url.Parse(cfg.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("healthie: the facade base URL %q is not an absolute http(s) URL", cfg.BaseURL)
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 1 << 20
	}
	if cfg.DefaultCount <= 0 {
		cfg.DefaultCount = 20
	}
	if cfg.MaxCount <= 0 {
		cfg.MaxCount = 100
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Facade{cfg: cfg, src: source{cfg.Client, mapper{source: cfg.Client.URL()}}, model: spec.R4(), log: cfg.Logger}, nil
}

// Use adds middleware (authentication, access control) around every
// route. Call it before Handler.
func (f *Facade) Use(mw func(http.Handler) http.Handler) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.middleware = append(f.middleware, mw)
}

// Handler is the facade's FHIR endpoint; mount it at the path of BaseURL
// (e.g. r.Mount("/facades/healthie/fhir", f.Handler())).
func (f *Facade) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(fhir.Recoverer, fhir.Negotiate)
	f.mu.Lock()
	for _, mw := range f.middleware {
		r.Use(mw)
	}
	f.mu.Unlock()
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		fhir.WriteError(w, r, errs.E("healthie.route", errs.NotFound, fmt.Sprintf("the Healthie facade has nothing at %s", r.URL.Path)))
	})
	r.MethodNotAllowed(f.unsupported)
	r.Get("/metadata", f.capabilities)
	r.Route("/{type}", func(r chi.Router) {
		r.Use(f.servedType)
		r.Get("/", f.search)
		r.Post("/_search", f.searchPost)
		r.Post("/", f.create)
		r.Get("/{id}", f.read)
		r.Put("/{id}", f.update)
		r.Delete("/{id}", f.delete)
		// Everything else under a type (history, vread, operations, PATCH,
		// PUT or DELETE on the type) is refused by name.
		r.HandleFunc("/*", f.unsupported)
	})
	r.HandleFunc("/", f.unsupported)
	return r
}

func (f *Facade) unsupported(w http.ResponseWriter, r *http.Request) {
	fhir.WriteError(w, r, errs.E("healthie.route", errs.MethodNotAllowed,
		fmt.Sprintf("the Healthie facade does not support %s %s; see %s/metadata for what it does", r.Method, strings.TrimPrefix(r.URL.Path, "/"), f.cfg.BaseURL)))
}

// servedType answers 404 for types the facade does not serve.
func (f *Facade) servedType(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		typ := chi.URLParam(r, "type")
		if _, ok := params[typ]; !ok {
			fhir.WriteError(w, r, errs.E("healthie.route", errs.NotFound, fmt.Sprintf("the Healthie facade does not serve %q; it serves %s", typ, strings.Join(Types, ", "))))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// access applies the request's fhir.Access: type rights, and a refusal of
// member-scoped tokens, whose patient is a local Patient the facade cannot
// relate to a Healthie client.
func access(r *http.Request, typ string, write bool) error {
	a := fhir.AccessFrom(r.Context())
	if a == nil {
		return nil
	}
	if a.Patient != "" {
		return errs.E("healthie.access", errs.Permission, "the Healthie facade serves practice staff and payer systems; a member-scoped token cannot use it")
	}
	if write && !a.CanWrite(typ) {
		return errs.E("healthie.access", errs.Permission, fmt.Sprintf("this token does not allow writing %s resources", typ))
	}
	if !write && !a.CanRead(typ) {
		return errs.E("healthie.access", errs.Permission, fmt.Sprintf("this token does not allow reading %s resources", typ))
	}
	return nil
}

const fhirJSON = "application/fhir+json; charset=utf-8"

func writeBody(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", fhirJSON)
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func (f *Facade) read(w http.ResponseWriter, r *http.Request) {
	typ, id := chi.URLParam(r, "type"), chi.URLParam(r, "id")
	if err := access(r, typ, false); err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	body, err := f.src.read(r.Context(), typ, id)
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	writeBody(w, http.StatusOK, body)
}

func (f *Facade) search(w http.ResponseWriter, r *http.Request) {
	f.runSearch(w, r, r.URL.Query())
}

func (f *Facade) searchPost(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		fhir.WriteError(w, r, errs.E("healthie.search", errs.UnsupportedMedia, "_search takes application/x-www-form-urlencoded parameters"))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, f.cfg.MaxBody)
	if err := r.ParseForm(); err != nil {
		fhir.WriteError(w, r, errs.E("healthie.search", errs.Invalid, "the search form could not be read", err))
		return
	}
	f.runSearch(w, r, r.Form)
}

func lenient(r *http.Request) bool {
	for _, h := range r.Header.Values("Prefer") {
		for _, part := range strings.Split(h, ";") {
			k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
			if strings.EqualFold(k, "handling") && strings.Trim(v, `"`) == "lenient" {
				return true
			}
		}
	}
	return false
}

// maxHealthiePages bounds the Healthie pages one FHIR page may read while
// filling itself; past it the page is answered short, with a next link.
const maxHealthiePages = 10

func (f *Facade) runSearch(w http.ResponseWriter, r *http.Request, values url.Values) {
	typ := chi.URLParam(r, "type")
	if err := access(r, typ, false); err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	m := &f.src.m
	q, err := parseQuery(typ, values, lenient(r), m, f.cfg.DefaultCount, f.cfg.MaxCount)
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	var entries []json.RawMessage
	next := ""
	if len(q.ids) > 0 {
		entries, err = f.byIDs(r.Context(), q)
	} else if q.count > 0 {
		entries, next, err = f.fill(r.Context(), q)
	}
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	writeBody(w, http.StatusOK, f.bundle(q, entries, next))
}

// byIDs answers an _id search by reading each resource.
func (f *Facade) byIDs(ctx context.Context, q *query) ([]json.RawMessage, error) {
	var out []json.RawMessage
	seen := map[string]bool{}
	for _, id := range q.ids {
		if seen[id] || id == "\x00" {
			continue
		}
		seen[id] = true
		body, err := f.src.read(ctx, q.typ, id)
		if errs.Is(err, errs.NotFound) || errs.Is(err, errs.Gone) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if ok, err := q.matches(body, &f.src.m); err != nil {
			return nil, err
		} else if ok && len(out) < q.count {
			out = append(out, body)
		}
	}
	return out, nil
}

// fill reads Healthie pages from the query's position until it has a full
// FHIR page of matches, and returns the position after the last resource
// it looked at ("" when Healthie has no more).
func (f *Facade) fill(ctx context.Context, q *query) ([]json.RawMessage, string, error) {
	pos, err := decodeCursor(q.cursor)
	if err != nil {
		return nil, "", err
	}
	n := q.narrowing(&f.src.m)
	size := min(100, max(q.count, 10))
	var out []json.RawMessage
	for range maxHealthiePages {
		items, more, err := f.src.list(ctx, q.typ, n, pos, size)
		if err != nil {
			return nil, "", err
		}
		for i, it := range items {
			ok, err := q.matches(it.json, &f.src.m)
			if err != nil {
				return nil, "", err
			}
			pos = it.after
			if !ok {
				continue
			}
			out = append(out, it.json)
			if len(out) == q.count {
				if i == len(items)-1 && !more {
					return out, "", nil
				}
				return out, pos, nil
			}
		}
		if !more || len(items) == 0 {
			return out, "", nil
		}
	}
	return out, pos, nil
}

func encodeCursor(pos string) string {
	return base64.RawURLEncoding.EncodeToString([]byte("v1:" + pos))
}

func decodeCursor(c string) (string, error) {
	if c == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	pos, ok := strings.CutPrefix(string(b), "v1:")
	if err != nil || !ok {
		return "", errs.E("healthie.page", errs.Invalid, "_cursor is not a page link of this facade; follow the Bundle's next link")
	}
	return pos, nil
}

func (f *Facade) bundle(q *query, entries []json.RawMessage, next string) []byte {
	link := func(cursor string) string {
		v := url.Values{}
		for _, kv := range q.kept {
			v.Add(kv[0], kv[1])
		}
		v.Set("_count", fmt.Sprint(q.count))
		if cursor != "" {
			v.Set("_cursor", cursor)
		}
		return f.cfg.BaseURL + "/" + q.typ + "?" + v.Encode()
	}
	now := time.Now().UTC().Format(time.RFC3339Nano)
	b := fhir.Bundle{ResourceType: "Bundle", ID: fhir.NewID(), Meta: &fhir.BundleMeta{LastUpdated: now}, Type: "searchset", Timestamp: now}
	b.Link = append(b.Link, fhir.BundleLink{Relation: "self", URL: link(q.cursor)})
	if next != "" {
		b.Link = append(b.Link, fhir.BundleLink{Relation: "next", URL: link(encodeCursor(next))})
	}
	if q.count == 0 {
		zero := 0
		b.Total = &zero // _count=0: nothing to list, and counting would page all of Healthie
	}
	for _, e := range entries {
		var head struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(e, &head)
		b.Entry = append(b.Entry, fhir.BundleEntry{FullURL: f.cfg.BaseURL + "/" + q.typ + "/" + head.ID, Resource: e, Search: &fhir.EntrySearch{Mode: "match"}})
	}
	if len(q.ignored) > 0 {
		oo, _ := json.Marshal(&fhir.OperationOutcome{ResourceType: "OperationOutcome", Issue: []fhir.OOIssue{{
			Severity: "warning", Code: "not-supported",
			Diagnostics: "the Healthie facade does not support these parameters and ignored them: " + strings.Join(q.ignored, ", "),
		}}})
		b.Entry = append(b.Entry, fhir.BundleEntry{Resource: oo, Search: &fhir.EntrySearch{Mode: "outcome"}})
	}
	body, _ := b.Encode()
	return body
}

// ---- CapabilityStatement ----

// writes lists the write interactions per type, each backed by a Healthie
// mutation.
var writes = map[string][]string{
	"Patient":     {"create", "update"},
	"Appointment": {"create", "delete"},
}

var (
	regOnce sync.Once
	reg     *search.Registry
)

func (f *Facade) capabilities(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	body := f.capJSON
	f.mu.Unlock()
	if body == nil {
		body = f.capabilityStatement()
		f.mu.Lock()
		f.capJSON = body
		f.mu.Unlock()
	}
	writeBody(w, http.StatusOK, body)
}

func (f *Facade) capabilityStatement() []byte {
	regOnce.Do(func() { reg = search.NewRegistry(spec.R4()) })
	defs := func(typ string) map[string]*search.Param {
		out := map[string]*search.Param{}
		for _, p := range reg.Params(typ) {
			out[p.Code] = p
		}
		return out
	}
	var resources []any
	for _, typ := range Types {
		d := defs(typ)
		inter := []any{obj{{"code", "read"}}, obj{{"code", "search-type"}}}
		for _, wr := range writes[typ] {
			inter = append(inter, obj{{"code", wr}})
		}
		sp := []any{obj{{"name", "_id"}, {"definition", "http://hl7.org/fhir/SearchParameter/Resource-id"}, {"type", "token"}}}
		for _, p := range params[typ] {
			o := obj{{"name", p.name}}
			if def := d[p.name]; def != nil {
				o = append(o, kv{"definition", def.URL}, kv{"type", def.Type})
			}
			sp = append(sp, o)
		}
		res := obj{{"type", typ}, {"interaction", inter}, {"versioning", "no-version"}, {"readHistory", false},
			{"updateCreate", false}, {"conditionalCreate", false}, {"conditionalRead", "not-supported"},
			{"conditionalUpdate", false}, {"conditionalDelete", "not-supported"}, {"searchParam", sp}}
		resources = append(resources, res)
	}
	cs := obj{
		{"resourceType", "CapabilityStatement"},
		{"status", "active"},
		{"date", time.Now().UTC().Format("2006-01-02")},
		{"kind", "instance"},
		{"software", obj{{"name", "p2pserver Healthie facade"}}},
		{"implementation", obj{{"description", "Healthie practice data (" + f.cfg.Client.URL() + ") served live as FHIR R4; reads and searches go to Healthie, writes go through Healthie's mutations"}, {"url", f.cfg.BaseURL}}},
		{"fhirVersion", "4.0.1"},
		{"format", []any{"application/fhir+json", "json"}},
		{"rest", []any{obj{{"mode", "server"}, {"resource", resources}}}},
	}
	return marshal(cs)
}
