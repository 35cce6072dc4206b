package fhir

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// Bundle is the wire form of the Bundles this server produces and reads.
type Bundle struct {
	ResourceType string        `json:"resourceType"`
	ID           string        `json:"id,omitempty"`
	Meta         *BundleMeta   `json:"meta,omitempty"`
	Type         string        `json:"type"`
	Timestamp    string        `json:"timestamp,omitempty"`
	Total        *int          `json:"total,omitempty"`
	Link         []BundleLink  `json:"link,omitempty"`
	Entry        []BundleEntry `json:"entry,omitempty"`
}

// BundleMeta is Bundle.meta.
type BundleMeta struct {
	LastUpdated string `json:"lastUpdated,omitempty"`
}

// BundleLink is Bundle.link.
type BundleLink struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

// BundleEntry is Bundle.entry.
type BundleEntry struct {
	FullURL  string          `json:"fullUrl,omitempty"`
	Resource json.RawMessage `json:"resource,omitempty"`
	Search   *EntrySearch    `json:"search,omitempty"`
	Request  *EntryRequest   `json:"request,omitempty"`
	Response *EntryResponse  `json:"response,omitempty"`
}

// EntrySearch is Bundle.entry.search.
type EntrySearch struct {
	Mode string `json:"mode"`
}

// EntryRequest is Bundle.entry.request.
type EntryRequest struct {
	Method      string `json:"method"`
	URL         string `json:"url"`
	IfMatch     string `json:"ifMatch,omitempty"`
	IfNoneExist string `json:"ifNoneExist,omitempty"`
}

// EntryResponse is Bundle.entry.response.
type EntryResponse struct {
	Status       string          `json:"status"`
	Location     string          `json:"location,omitempty"`
	Etag         string          `json:"etag,omitempty"`
	LastModified string          `json:"lastModified,omitempty"`
	Outcome      json.RawMessage `json:"outcome,omitempty"`
}

func newBundle(typ string) *Bundle {
	now := time.Now().UTC().Format(time.RFC3339Nano)
	return &Bundle{ResourceType: "Bundle", ID: NewID(), Meta: &BundleMeta{LastUpdated: now}, Type: typ, Timestamp: now}
}

func (s *Server) fullURL(v *store.Version) string {
	return s.cfg.BaseURL + "/" + v.Type + "/" + v.ID
}

// snapshot is a search's result set, kept so that later pages are exactly
// the continuation of the first whatever is written meanwhile.
type snapshot struct {
	typ     string
	ids     []string
	query   *search.Query
	self    string
	expires time.Time
	// binding is the Key of the principal that made it: only the same
	// rights may page through it.
	binding string
	bytes   int64 // what it holds, as counted against the cache's budget
}

// pageCache keeps result sets for paging within a budget of bytes: what
// each result set holds (its ids, the parsed query, the self link) is
// counted, and past the budget the oldest result sets are dropped (their
// links then answer 410, and the search must be run again). One result
// set may take at most a quarter of the budget: a search that would keep
// more is refused as too costly rather than evicting everyone else's
// paging. The count of result sets is bounded too.
type pageCache struct {
	mu       sync.Mutex
	ttl      time.Duration
	max      int   // result sets
	maxBytes int64 // bytes of all result sets
	bytes    int64
	m        map[string]*snapshot
}

func newPageCache(ttl time.Duration, max int, maxBytes int64) *pageCache {
	return &pageCache{ttl: ttl, max: max, maxBytes: maxBytes, m: map[string]*snapshot{}}
}

// maxSet is the most bytes one result set may hold.
func (c *pageCache) maxSet() int64 { return c.maxBytes / 4 }

// errTooCostly refuses a result set larger than the cache keeps.
func (c *pageCache) errTooCostly(what string, n int) error {
	return errs.E("fhir.page", errs.Unprocessable, fmt.Sprintf(
		"%s has %d results, more than this server keeps for paging (a quarter of -search-cache-bytes, %d bytes); narrow it (by date, type or a more selective parameter)",
		what, n, c.maxSet()), errs.Issue{Code: "too-costly", Message: fmt.Sprintf("%s has %d results, too many to page", what, n)})
}

// put keeps sn and returns its key; a result set over maxSet is refused.
func (c *pageCache) put(sn *snapshot, what string) (string, error) {
	sn.bytes = sn.size()
	if sn.bytes > c.maxSet() {
		return "", c.errTooCostly(what, len(sn.ids))
	}
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	key := hex.EncodeToString(b)
	now := time.Now()
	sn.expires = now.Add(c.ttl)
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, v := range c.m {
		if v.expires.Before(now) {
			c.drop(k)
		}
	}
	for len(c.m) > 0 && (len(c.m) >= c.max || c.bytes+sn.bytes > c.maxBytes) {
		oldest := ""
		for k, v := range c.m {
			if oldest == "" || v.expires.Before(c.m[oldest].expires) {
				oldest = k
			}
		}
		c.drop(oldest)
	}
	c.m[key] = sn
	c.bytes += sn.bytes
	return key, nil
}

func (c *pageCache) drop(key string) {
	c.bytes -= c.m[key].bytes
	delete(c.m, key)
}

func (c *pageCache) get(key string) *snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	sn := c.m[key]
	if sn != nil && time.Now().After(sn.expires) {
		c.drop(key)
		return nil
	}
	return sn
}

// size estimates the bytes a result set holds: each string with its
// header and allocation rounding, each parsed clause, value and range,
// the kept query and the self link.
func (sn *snapshot) size() int64 {
	str := func(s string) int64 { return 16 + int64(len(s)+15)&^15 }
	n := int64(256) + str(sn.typ) + str(sn.self) + 24
	for _, id := range sn.ids {
		n += str(id)
	}
	if q := sn.query; q != nil {
		n += 512
		for _, c := range q.Clauses {
			n += 128 + str(c.Modifier)
			for _, v := range c.Values {
				n += 64 + str(v.Raw)
				for _, r := range v.Ranges {
					n += 48 + str(r.Start) + str(r.End)
				}
			}
		}
		for k, vs := range q.Kept {
			n += 64 + str(k)
			for _, v := range vs {
				n += str(v)
			}
		}
		for _, l := range [][]string{q.Elements, q.Ignored, q.Linked} {
			for _, v := range l {
				n += str(v)
			}
		}
		n += int64(len(q.Sort))*32 + int64(len(q.Include)+len(q.RevInclude))*64 + str(q.Compartment)
	}
	return n
}

// searchBundle runs a search and renders its first page.
func (s *Server) searchBundle(tx *store.Tx, typ string, params url.Values, lenient bool) ([]byte, error) {
	links := s.patientLinks()
	a := AccessFrom(tx.Context())
	if err := s.policy.Need(a, typ, authz.Search); err != nil {
		return nil, err
	}
	q, err := s.reg.Parse(typ, params, search.Options{
		Base: s.cfg.BaseURL, Lenient: lenient, DefaultCount: s.cfg.DefaultCount, MaxCount: s.cfg.MaxCount,
		MDM: links != nil,
	})
	if err != nil {
		return nil, err
	}
	s.policy.Confine(tx, a, q)
	ids, err := tx.Search(q)
	if err != nil {
		return nil, err
	}
	if ids, err = s.policy.Filter(tx, a, typ, ids); err != nil {
		return nil, err
	}
	q.Visible = nil // bound to this transaction; the snapshot outlives it
	sn := &snapshot{typ: typ, ids: ids, query: q, self: s.cfg.BaseURL + "/" + typ, binding: a.Key()}
	if enc := selfParams(q).Encode(); enc != "" {
		sn.self += "?" + enc
	}
	var key string
	if q.Count > 0 && len(ids) > q.Count && q.Summary != "count" {
		if key, err = s.pages.put(sn, "this search"); err != nil {
			return nil, err
		}
	}
	return s.renderPage(tx, sn, key, 0)
}

// searchPage renders a later page of a kept result set: cursor is
// "<key>.<offset>".
func (s *Server) searchPage(tx *store.Tx, typ, cursor string) ([]byte, error) {
	key, off, ok := strings.Cut(cursor, ".")
	offset, err := strconv.Atoi(off)
	if !ok || err != nil || offset < 0 {
		return nil, errs.E("fhir.page", errs.Invalid, fmt.Sprintf("%q is not a page cursor of this server", cursor))
	}
	a := AccessFrom(tx.Context())
	if err := s.policy.Need(a, typ, authz.Search); err != nil {
		return nil, err
	}
	sn := s.pages.get(key)
	if sn == nil || sn.typ != typ {
		return nil, errs.E("fhir.page", errs.Gone, "this search result has expired; run the search again")
	}
	if sn.binding != a.Key() {
		return nil, errs.E("fhir.page", errs.Permission, "this page belongs to a search made with other access rights")
	}
	return s.renderPage(tx, sn, key, offset)
}

func (s *Server) pageURL(sn *snapshot, key string, offset int) string {
	return fmt.Sprintf("%s/%s?_cursor=%s.%d", s.cfg.BaseURL, sn.typ, key, offset)
}

func (s *Server) renderPage(tx *store.Tx, sn *snapshot, key string, offset int) ([]byte, error) {
	q := sn.query
	noteSearch(tx.Context(), q)
	b := newBundle("searchset")
	if q.Total != "none" {
		total := len(sn.ids)
		b.Total = &total
	}
	self := sn.self
	if offset > 0 {
		self = s.pageURL(sn, key, offset)
	}
	b.Link = append(b.Link, BundleLink{Relation: "self", URL: self})
	if q.Summary == "count" || q.Count == 0 {
		return b.Encode()
	}
	if offset > len(sn.ids) {
		offset = len(sn.ids)
	}
	end := min(offset+q.Count, len(sn.ids))
	if key != "" {
		b.Link = append(b.Link, BundleLink{Relation: "first", URL: s.pageURL(sn, key, 0)})
		if end < len(sn.ids) {
			b.Link = append(b.Link, BundleLink{Relation: "next", URL: s.pageURL(sn, key, end)})
		}
		if offset > 0 {
			b.Link = append(b.Link, BundleLink{Relation: "previous", URL: s.pageURL(sn, key, max(0, offset-q.Count))})
		}
		last := ((len(sn.ids) - 1) / q.Count) * q.Count
		b.Link = append(b.Link, BundleLink{Relation: "last", URL: s.pageURL(sn, key, last)})
	}
	// Every resource is checked again as the page is served: it may have
	// changed hands since the search ran.
	sees := s.policy.Seer(tx, AccessFrom(tx.Context()))
	ids := sn.ids[offset:end]
	matches, err := tx.ReadCurrent(sn.typ, ids)
	if err != nil {
		return nil, err
	}
	var seen []string // the ids of the matches served
	for _, v := range matches {
		if !sees(v) {
			continue
		}
		seen = append(seen, v.ID)
		body, err := s.shapeResource(v.JSON, v.Type, q.Summary, q.Elements)
		if err != nil {
			return nil, err
		}
		b.Entry = append(b.Entry, BundleEntry{FullURL: s.fullURL(v), Resource: body, Search: &EntrySearch{Mode: "match"}})
	}
	extra, cut, err := s.included(tx, sn.typ, seen, q, sees)
	if err != nil {
		return nil, err
	}
	for _, v := range extra {
		body, err := s.shapeResource(v.JSON, v.Type, q.Summary, nil)
		if err != nil {
			return nil, err
		}
		b.Entry = append(b.Entry, BundleEntry{FullURL: s.fullURL(v), Resource: body, Search: &EntrySearch{Mode: "include"}})
	}
	if cut {
		oo, _ := json.Marshal(includeLimitOutcome(s.cfg.MaxIncluded))
		b.Entry = append(b.Entry, BundleEntry{Resource: oo, Search: &EntrySearch{Mode: "outcome"}})
	}
	if len(q.Ignored) > 0 {
		oo, _ := json.Marshal(&OperationOutcome{ResourceType: "OperationOutcome", Issue: []OOIssue{{
			Severity: "warning", Code: "not-supported",
			Diagnostics: "these parameters are not known and were ignored: " + strings.Join(q.Ignored, ", "),
		}}})
		b.Entry = append(b.Entry, BundleEntry{Resource: oo, Search: &EntrySearch{Mode: "outcome"}})
	}
	return b.Encode()
}

func (s *Server) historyBundle(r *http.Request, page *store.HistoryPage, hq store.HistoryQuery) *Bundle {
	b := newBundle("history")
	if page.Total >= 0 {
		b.Total = &page.Total
	}
	path := s.cfg.BaseURL
	if hq.Type != "" {
		path += "/" + hq.Type
	}
	if hq.ID != "" {
		path += "/" + hq.ID
	}
	path += "/_history"
	b.Link = append(b.Link, BundleLink{Relation: "self", URL: path + queryOf(r)})
	if page.Next != 0 {
		q := url.Values{"_cursor": {strconv.FormatUint(page.Next, 10)}, "_count": {strconv.Itoa(hq.Count)}}
		if !hq.Since.IsZero() {
			q.Set("_since", hq.Since.Format(time.RFC3339Nano))
		}
		b.Link = append(b.Link, BundleLink{Relation: "next", URL: path + "?" + q.Encode()})
	}
	for _, v := range page.Versions {
		e := BundleEntry{
			FullURL: s.fullURL(v),
			Request: &EntryRequest{Method: http.MethodPut, URL: v.Type + "/" + v.ID},
			Response: &EntryResponse{
				Status: "200 OK", Etag: fmt.Sprintf(`W/"%d"`, v.VersionID),
				LastModified: v.LastUpdated.Format(time.RFC3339Nano),
			},
		}
		switch {
		case v.Deleted:
			e.Request.Method = http.MethodDelete
			e.Response.Status = "204 No Content"
		case v.VersionID == 1:
			e.Request.Method = http.MethodPost
			e.Request.URL = v.Type
			e.Response.Status = "201 Created"
		}
		if !v.Deleted {
			e.Resource = v.JSON
		}
		b.Entry = append(b.Entry, e)
	}
	return b
}

func queryOf(r *http.Request) string {
	if r.URL.RawQuery == "" {
		return ""
	}
	return "?" + r.URL.RawQuery
}

// selfParams are the parameters a searchset's self link lists: those
// applied (FHIR R4 search.html#conformance: the self link "SHALL represent
// the search parameters as processed"). _summary=count returns no
// resources, so the parameters that choose, order or shape returned
// resources (_include, _revinclude, _sort, _elements, _count) are not
// applied then and are left out.
func selfParams(q *search.Query) url.Values {
	if q.Summary != "count" {
		return q.Kept
	}
	out := url.Values{}
	for k, vs := range q.Kept {
		base, _, _ := strings.Cut(k, ":")
		switch base {
		case "_include", "_revinclude", "_sort", "_elements", "_count":
			continue
		}
		out[k] = vs
	}
	return out
}
