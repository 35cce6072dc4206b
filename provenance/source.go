package provenance

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
)

// SourceConfig names this payer in the Provenance it supplies for what it
// serves.
type SourceConfig struct {
	// BaseURL is the FHIR base URL; absolute references under it count as
	// local.
	BaseURL string
	// OrganizationName and OrganizationID identify this payer: its name and
	// its payer id (the same kind of value as a source payer definition's
	// organizationId). At least one is required.
	OrganizationName string
	OrganizationID   string
	// OrganizationResource, when set, is the id of the Organization
	// resource here that is this payer: the transmitter agent then refers
	// to it, and pages that carry generated Provenance include it.
	OrganizationResource string
	Logger               *slog.Logger
	// Now is the clock for Provenance.recorded; default time.Now.
	Now func() time.Time
}

// Source supplies Provenance for the resources this payer serves to another
// payer (the source role of the PDex exchange), so that the receiving
// payer can trace each resource to the payer that sent it.
//
// It works on the searchset Bundles the server answers, as they leave, and
// adds only what the request asked for, so that a search answers the type
// searched for and the includes requested, nothing else (FHIR R4
// search.html#include; the Da Vinci PDex payer-server suite checks that
// Encounter?patient=... answers Encounters only):
//
//   - every page of Patient/$everything (the PDex "Provenance is part of
//     the member's record" rule): Provenance for every resource on the
//     page, and this payer's Organization when a generated Provenance
//     names it;
//   - a search page whose search has _revinclude=Provenance:target (or
//     Provenance:target:<the served type>, or Provenance:*), whoever
//     asks: Provenance for its matches, and with _revinclude:iterate for
//     its included resources too. The server's search already adds the
//     stored Provenance that targets them; Source adds a generated one
//     for each that has none. This payer's Organization, which generated
//     Provenance names as its agent, comes along only when the search
//     asks for the Provenance's agents (_include:iterate=Provenance:agent,
//     Provenance:agent:Organization, Provenance:* or *).
//
// What is added for a served resource:
//
//   - the stored Provenance resources that target it and that the request
//     may read, as include entries (if not on the page already);
//   - when there is none, a Provenance generated for it, following the
//     PDex Provenance profile: target the served version
//     (Type/id/_history/n), recorded when served, this payer as the
//     transmitter agent. It is added as an include entry with a urn:uuid
//     fullUrl and no id, since it is not stored: the same version served
//     twice gets the same uuid, so a receiver that stores by fullUrl keeps
//     one.
//
// Provenance is only added where the request may read Provenance. Single
// reads (GET Type/id) answer the resource alone, as FHIR has no place for
// it there; a client that wants Provenance uses a search or $everything.
type Source struct {
	st  *store.Store
	cfg SourceConfig
	log *slog.Logger
	// policy decides which stored Provenance a request may have; Attach
	// sets the FHIR server's.
	policy *authz.Policy
}

// NewSource builds a Source over the store the FHIR server serves from.
func NewSource(st *store.Store, cfg SourceConfig) (*Source, error) {
	if strings.TrimSpace(cfg.OrganizationName) == "" && strings.TrimSpace(cfg.OrganizationID) == "" {
		return nil, errors.New("provenance: name this payer (organization name or id) for the Provenance it supplies")
	}
	if cfg.OrganizationResource != "" && !validID(cfg.OrganizationResource) {
		return nil, fmt.Errorf("provenance: %q is not a FHIR id for the payer's Organization", cfg.OrganizationResource)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	src := &Source{st: st, cfg: cfg, log: cfg.Logger}
	if st != nil {
		src.policy = authz.New(st.Registry(), cfg.BaseURL)
	}
	return src, nil
}

func validID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// Attach installs the middleware on s. Call it after the access control's
// Attach (smart.Guard), so that the request's fhir.Access is known here,
// and before s.Handler.
func (s *Source) Attach(srv *fhir.Server) {
	s.policy = srv.Policy()
	srv.Use(s.Middleware)
}

// Served is one resource a page serves.
type Served struct {
	Type, ID  string
	VersionID int64 // 0 when unknown: the target is then unversioned
}

// generatedNamespace derives the uuid of a generated Provenance from what
// it is about.
var generatedNamespace = uuid.NewSHA1(uuid.NameSpaceURL, []byte("urn:p2pserver:served-provenance"))

// Generate builds the Provenance this payer supplies for a served resource
// that has none, and the urn:uuid fullUrl to give it. It is valid FHIR R4
// and claims the PDex Provenance profile.
func (s *Source) Generate(r Served, recorded time.Time) (json.RawMessage, string, error) {
	target := r.Type + "/" + r.ID
	if r.VersionID > 0 {
		target += "/_history/" + strconv.FormatInt(r.VersionID, 10)
	}
	who := refJSON{Type: "Organization", Display: s.cfg.OrganizationName}
	if s.cfg.OrganizationResource != "" {
		who.Reference = "Organization/" + s.cfg.OrganizationResource
	}
	if s.cfg.OrganizationID != "" {
		who.Identifier = &identifierJSON{Type: &conceptJSON{Text: "Payer ID"}, Value: s.cfg.OrganizationID}
	}
	pr := provenanceJSON{
		ResourceType: "Provenance",
		Meta:         metaJSON{Profile: []string{PDexProvenanceProfile}},
		Target:       []refJSON{{Reference: target}},
		Recorded:     recorded.UTC().Format("2006-01-02T15:04:05.000Z07:00"),
		Agent: []agentJSON{{
			Type: conceptJSON{Coding: []codingJSON{{System: participantTypeSystem, Code: transmitterCode, Display: "Transmitter"}}},
			Who:  who,
		}},
	}
	raw, err := json.Marshal(pr)
	if err != nil {
		return nil, "", fmt.Errorf("provenance: encode: %w", err)
	}
	id := uuid.NewSHA1(generatedNamespace, []byte(s.cfg.BaseURL+"/"+target))
	return raw, "urn:uuid:" + id.String(), nil
}

// Entries returns the Provenance entries (search mode include) for the
// resources a page serves, as the type comment describes, and this payer's
// Organization after them when withOrganization is set and a generated
// Provenance names it. present holds the fullUrls already on the page,
// which are not added again; it is updated. tx's context carries the
// request's access rights.
func (s *Source) Entries(tx *store.Tx, served []Served, present map[string]bool, withOrganization bool) ([]fhir.BundleEntry, error) {
	a := fhir.AccessFrom(tx.Context())
	if !a.CanRead("Provenance") {
		return nil, nil
	}
	sees := s.policy.Seer(tx, a)
	now := s.cfg.Now()
	var out []fhir.BundleEntry
	generated := false
	for _, r := range served {
		stored := tx.Referencing("Provenance", "target", r.Type, r.ID)
		visible := 0
		for _, id := range stored {
			v, err := tx.Read("Provenance", id)
			if err != nil || !sees(v) {
				continue
			}
			visible++
			full := s.cfg.BaseURL + "/Provenance/" + id
			if present[full] {
				continue
			}
			present[full] = true
			out = append(out, fhir.BundleEntry{FullURL: full, Resource: v.JSON, Search: &fhir.EntrySearch{Mode: "include"}})
		}
		if visible > 0 {
			continue
		}
		raw, full, err := s.Generate(r, now)
		if err != nil {
			return nil, err
		}
		if present[full] {
			continue
		}
		present[full] = true
		generated = true
		out = append(out, fhir.BundleEntry{FullURL: full, Resource: raw, Search: &fhir.EntrySearch{Mode: "include"}})
	}
	if withOrganization && generated && s.cfg.OrganizationResource != "" {
		full := s.cfg.BaseURL + "/Organization/" + s.cfg.OrganizationResource
		if v, err := tx.Read("Organization", s.cfg.OrganizationResource); err == nil && !present[full] && sees(v) {
			present[full] = true
			out = append(out, fhir.BundleEntry{FullURL: full, Resource: v.JSON, Search: &fhir.EntrySearch{Mode: "include"}})
		}
	}
	return out, nil
}

// Middleware adds Provenance to the searchset Bundles the FHIR server
// answers, where they ask for it (see Source). Other answers pass
// untouched, and are not held back.
func (s *Source) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if (r.Method != http.MethodGet && r.Method != http.MethodPost) || readByID(routePath(r)) {
			next.ServeHTTP(w, r)
			return
		}
		everything := strings.Contains(r.URL.Path, "/$everything")
		ctx, info := fhir.WithSearchInfo(r.Context())
		var ask asked
		bw := &bufferedWriter{w: w, want: func() bool {
			if everything {
				ask = asked{modes: []string{"match", "include"}, organization: true}
			} else {
				ask = provenanceAsked(info.Query())
			}
			return len(ask.modes) > 0
		}}
		next.ServeHTTP(bw, r.WithContext(ctx))
		if !bw.buffering {
			return // already passed through
		}
		body := bw.buf.Bytes()
		if out, err := s.augment(r, body, ask); err != nil {
			s.log.ErrorContext(r.Context(), "provenance: could not add Provenance to a served page; sent without", "path", r.URL.Path, "err", err)
		} else if out != nil {
			body = out
		}
		w.WriteHeader(bw.status)
		_, _ = w.Write(body)
	})
}

// asked is what a page asks Source to add: Provenance for its entries of
// the search modes listed (none: nothing), and this payer's Organization
// with the Provenance generated.
type asked struct {
	modes        []string
	types        []string // the served types Provenance is asked for; nil for every type
	organization bool
}

// provenanceAsked reads a search's _revinclude and _include
// (search.html#include): _revinclude=Provenance:target asks for the
// Provenance of the matches (Provenance:target:<Type> of those of one
// type; Provenance:* too), :iterate of the included resources as well;
// an _include:iterate of Provenance's agent asks for the agents of the
// Provenance included, this payer's Organization among them.
func provenanceAsked(q *search.Query) asked {
	var a asked
	if q == nil {
		return a
	}
	all := false
	for _, inc := range q.RevInclude {
		if inc.Type != "Provenance" || (inc.Param != "target" && inc.Param != "*") {
			continue
		}
		if len(a.modes) == 0 {
			a.modes = []string{"match"}
		}
		if inc.Iterate {
			a.modes = []string{"match", "include"}
		}
		if inc.TargetType == "" {
			all = true
		} else {
			a.types = append(a.types, inc.TargetType)
		}
	}
	if all {
		a.types = nil
	}
	for _, inc := range q.Include {
		if inc.Iterate && (inc.Type == "Provenance" || inc.Type == "*") && (inc.Param == "agent" || inc.Param == "*") &&
			(inc.TargetType == "" || inc.TargetType == "Organization") {
			a.organization = true
		}
	}
	return a
}

// augment returns the page with Provenance entries, or nil when it is not
// a searchset Bundle or nothing is to be added.
func (s *Source) augment(r *http.Request, body []byte, ask asked) ([]byte, error) {
	var peek struct {
		ResourceType string `json:"resourceType"`
		Type         any    `json:"type"` // a code in a Bundle, a CodeableConcept elsewhere
	}
	if err := json.Unmarshal(body, &peek); err != nil || peek.ResourceType != "Bundle" || peek.Type != "searchset" {
		return nil, nil
	}
	var b fhir.Bundle
	if err := json.Unmarshal(body, &b); err != nil {
		return nil, err
	}
	present := map[string]bool{}
	var served []Served
	for _, e := range b.Entry {
		if e.FullURL != "" {
			present[e.FullURL] = true
		}
		if e.Search == nil || !slices.Contains(ask.modes, e.Search.Mode) {
			continue
		}
		var res struct {
			ResourceType string `json:"resourceType"`
			ID           string `json:"id"`
			Meta         struct {
				VersionID string `json:"versionId"`
			} `json:"meta"`
		}
		if err := json.Unmarshal(e.Resource, &res); err != nil {
			return nil, err
		}
		switch {
		case res.ID == "", res.ResourceType == "Provenance", res.ResourceType == "OperationOutcome":
			continue
		case res.ResourceType == "Organization" && res.ID == s.cfg.OrganizationResource:
			continue // this payer itself
		case ask.types != nil && !slices.Contains(ask.types, res.ResourceType):
			continue
		}
		vid, _ := strconv.ParseInt(res.Meta.VersionID, 10, 64)
		served = append(served, Served{Type: res.ResourceType, ID: res.ID, VersionID: vid})
	}
	if len(served) == 0 {
		return nil, nil
	}
	var add []fhir.BundleEntry
	err := s.st.View(r.Context(), func(tx *store.Tx) error {
		var err error
		add, err = s.Entries(tx, served, present, ask.organization)
		return err
	})
	if err != nil {
		return nil, err
	}
	if len(add) == 0 {
		return nil, nil
	}
	// Include entries go after the matches and includes, before any
	// OperationOutcome, which by convention comes last.
	var outcome []fhir.BundleEntry
	for len(b.Entry) > 0 && b.Entry[len(b.Entry)-1].Search != nil && b.Entry[len(b.Entry)-1].Search.Mode == "outcome" {
		outcome = append([]fhir.BundleEntry{b.Entry[len(b.Entry)-1]}, outcome...)
		b.Entry = b.Entry[:len(b.Entry)-1]
	}
	b.Entry = append(append(b.Entry, add...), outcome...)
	return b.Encode()
}

// bufferedWriter holds back a successful FHIR JSON answer so that it can
// be amended; anything else goes straight through.
type bufferedWriter struct {
	w http.ResponseWriter
	// want says, once the header is written, whether the answer is one to
	// amend.
	want      func() bool
	status    int
	decided   bool
	buffering bool
	buf       bytes.Buffer
}

func (b *bufferedWriter) Header() http.Header { return b.w.Header() }

func (b *bufferedWriter) WriteHeader(status int) {
	if b.decided {
		return
	}
	b.decided, b.status = true, status
	b.buffering = status == http.StatusOK && mediaType(b.w.Header().Get("Content-Type")) == "application/fhir+json" && b.want()
	if !b.buffering {
		b.w.WriteHeader(status)
	}
}

func (b *bufferedWriter) Write(p []byte) (int, error) {
	if !b.decided {
		b.WriteHeader(http.StatusOK)
	}
	if b.buffering {
		return b.buf.Write(p)
	}
	return b.w.Write(p)
}

// mediaType is the media type of a Content-Type value, lower case, without
// its parameters. Every FHIR answer passes here, so it does not parse the
// parameters as mime.ParseMediaType would.
func mediaType(ct string) string {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.ToLower(strings.TrimSpace(ct))
}

// routePath is r's path below the FHIR base.
func routePath(r *http.Request) string {
	if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePath != "" {
		return rc.RoutePath
	}
	return r.URL.Path
}

// readByID reports whether path (below the FHIR base) is [type]/[id], a
// read of one resource (FHIR R4 http.html#read): its answer is the
// resource, never a searchset Bundle, so there is nothing to add and the
// answer is not looked at. Searches ([type], [type]/_search) and
// operations ($name) are not reads.
func readByID(path string) bool {
	typ, id, ok := strings.Cut(strings.Trim(path, "/"), "/")
	return ok && typ != "" && id != "" && !strings.Contains(id, "/") &&
		typ[0] != '_' && typ[0] != '$' && id[0] != '_' && id[0] != '$'
}
