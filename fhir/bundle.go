package fhir

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
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
	// compact is set by this package on an entry whose Resource it knows
	// to be compact valid JSON: a stored version (the store writes every
	// version compact, see store.Tx.Put) or what shapeResource made.
	// Encode writes it as it is instead of compacting it again.
	compact bool
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

// snapshot is what a paged search or $everything keeps between pages.
// For a search it is the request itself (params, lenient): each page runs
// the query again from the position its link carries (keyset paging), so
// nothing proportional to the matches is kept. For $everything it is the
// result set (ids), kept so that later pages are exactly the continuation
// of the first.
type snapshot struct {
	typ     string
	ids     []string
	params  url.Values // a search's request parameters
	lenient bool
	query   *search.Query
	self    string
	expires time.Time
	// binding is the Key of the principal that made it: only the same
	// rights may page through it.
	binding string
	bytes   int64 // what it holds, as counted against the cache's budget
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
	for k, vs := range sn.params {
		n += 64 + str(k)
		for _, v := range vs {
			n += str(v)
		}
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
	a := AccessFrom(tx.Context())
	if err := s.policy.Need(a, typ, authz.Search); err != nil {
		return nil, err
	}
	q, err := s.parseSearch(tx, typ, params, lenient)
	if err != nil {
		return nil, err
	}
	sn := &snapshot{typ: typ, params: params, lenient: lenient, self: s.cfg.BaseURL + "/" + typ, binding: a.Key()}
	if enc := selfParams(q).Encode(); enc != "" {
		sn.self += "?" + enc
	}
	return s.renderSearch(tx, sn, "", q, nil)
}

// parseSearch parses a search and confines it to what the requester may
// see, in tx.
func (s *Server) parseSearch(tx *store.Tx, typ string, params url.Values, lenient bool) (*search.Query, error) {
	links := s.patientLinks()
	q, err := s.reg.Parse(typ, params, search.Options{
		Base: s.cfg.BaseURL, Lenient: lenient, DefaultCount: s.cfg.DefaultCount, MaxCount: s.cfg.MaxCount,
		MDM: links != nil,
	})
	if err != nil {
		return nil, err
	}
	s.policy.Confine(tx, AccessFrom(tx.Context()), q)
	return q, nil
}

// searchPage renders a later page of a search: cursor is "<key>.<pos>",
// the key of the kept search and the position after which the page starts
// (empty for the first page; see encodePosition).
func (s *Server) searchPage(tx *store.Tx, typ, cursor string) ([]byte, error) {
	key, enc, ok := strings.Cut(cursor, ".")
	pos, err := decodePosition(enc)
	if !ok || err != nil {
		return nil, errs.E("fhir.page", errs.Invalid, fmt.Sprintf("%q is not a page cursor of this server", cursor))
	}
	a := AccessFrom(tx.Context())
	if err := s.policy.Need(a, typ, authz.Search); err != nil {
		return nil, err
	}
	sn := s.pages.get(tx, key)
	if sn == nil || sn.typ != typ || sn.params == nil {
		return nil, s.pages.errGone("fhir.page", key, "this search result", "run the search again")
	}
	if sn.binding != a.Key() {
		return nil, errs.E("fhir.page", errs.Permission, "this page belongs to a search made with other access rights")
	}
	// Parsed and confined afresh: the member's record, the targets of its
	// chains and its MDM links are those of now.
	q, err := s.parseSearch(tx, typ, sn.params, sn.lenient)
	if err != nil {
		return nil, err
	}
	return s.renderSearch(tx, sn, key, q, pos)
}

// encodePosition writes a page position for a link ("" for the first
// page): the id, then per sort key "!1" and the value or "!0" when the
// resource had none, each part query-escaped. Readable on purpose: it
// names only the last resource the page served and its sort values.
func encodePosition(p *store.Position) string {
	if p == nil {
		return ""
	}
	var b strings.Builder
	b.WriteString(url.QueryEscape(p.ID))
	for i, v := range p.Vals {
		if p.Has[i] {
			b.WriteString("!1" + url.QueryEscape(v))
		} else {
			b.WriteString("!0")
		}
	}
	return b.String()
}

func decodePosition(s string) (*store.Position, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, "!")
	id, err := url.QueryUnescape(parts[0])
	if err != nil || id == "" {
		return nil, fmt.Errorf("bad position")
	}
	p := &store.Position{ID: id}
	for _, part := range parts[1:] {
		switch {
		case part == "0":
			p.Vals, p.Has = append(p.Vals, ""), append(p.Has, false)
		case strings.HasPrefix(part, "1"):
			v, err := url.QueryUnescape(part[1:])
			if err != nil {
				return nil, err
			}
			p.Vals, p.Has = append(p.Vals, v), append(p.Has, true)
		default:
			return nil, fmt.Errorf("bad position")
		}
	}
	return p, nil
}

func (s *Server) searchPageURL(sn *snapshot, key string, pos *store.Position) string {
	return fmt.Sprintf("%s/%s?_cursor=%s", s.cfg.BaseURL, sn.typ, url.QueryEscape(key+"."+encodePosition(pos)))
}

// renderSearch runs q from pos (nil for the first page) and renders the
// page. key is the kept search's, "" on the first request: it is kept only
// when there is a next page to link to.
func (s *Server) renderSearch(tx *store.Tx, sn *snapshot, key string, q *search.Query, pos *store.Position) ([]byte, error) {
	noteSearch(tx.Context(), q)
	a := AccessFrom(tx.Context())
	keep := func(ids []string) ([]string, error) { return s.policy.Filter(tx, a, sn.typ, ids) }
	b := newBundle("searchset")
	self := sn.self
	if key != "" {
		self = s.searchPageURL(sn, key, pos)
	}
	b.Link = append(b.Link, BundleLink{Relation: "self", URL: self})
	if q.Summary == "count" || q.Count == 0 {
		if q.Total != "none" {
			total, err := tx.SearchCount(q, keep)
			if err != nil {
				return nil, err
			}
			b.Total = &total
		}
		return b.Encode()
	}
	ids, last, more, err := tx.SearchPage(q, pos, q.Count, keep)
	if err != nil {
		return nil, err
	}
	switch {
	case q.Total == "accurate":
		total, err := tx.SearchCount(q, keep)
		if err != nil {
			return nil, err
		}
		b.Total = &total
	case q.Total != "none" && pos == nil && !more:
		// Known without counting: everything is on this one page.
		total := len(ids)
		b.Total = &total
	}
	if more && key == "" {
		if key, err = s.pages.put(tx, sn, "this search's query"); err != nil {
			return nil, err
		}
	}
	if key != "" {
		b.Link = append(b.Link, BundleLink{Relation: "first", URL: s.searchPageURL(sn, key, nil)})
		if more {
			b.Link = append(b.Link, BundleLink{Relation: "next", URL: s.searchPageURL(sn, key, last)})
		}
	}
	return s.renderEntries(tx, b, sn.typ, ids, q)
}

// renderEntries adds to b the matches ids of typ, each checked again
// against the requester's rights as it is served (it may have changed
// hands since the search ran), their _include and _revinclude, and the
// outcomes the page needs; and encodes b.
func (s *Server) renderEntries(tx *store.Tx, b *Bundle, typ string, ids []string, q *search.Query) ([]byte, error) {
	sees := s.policy.Seer(tx, AccessFrom(tx.Context()))
	matches, err := tx.ReadCurrent(typ, ids)
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
		b.Entry = append(b.Entry, BundleEntry{FullURL: s.fullURL(v), Resource: body, Search: &EntrySearch{Mode: "match"}, compact: true})
	}
	extra, cut, err := s.included(tx, typ, seen, q, sees)
	if err != nil {
		return nil, err
	}
	for _, v := range extra {
		body, err := s.shapeResource(v.JSON, v.Type, q.Summary, nil)
		if err != nil {
			return nil, err
		}
		b.Entry = append(b.Entry, BundleEntry{FullURL: s.fullURL(v), Resource: body, Search: &EntrySearch{Mode: "include"}, compact: true})
	}
	if cut {
		oo, _ := json.Marshal(includeLimitOutcome(s.cfg.MaxIncluded))
		b.Entry = append(b.Entry, BundleEntry{Resource: oo, Search: &EntrySearch{Mode: "outcome"}})
	}
	if len(q.Ignored) > 0 {
		oo, _ := json.Marshal(&OperationOutcome{ResourceType: "OperationOutcome", Issue: []OOIssue{{
			Severity: "warning", Code: "not-supported",
			Diagnostics: "these parameters are not known or not supported, and were ignored: " + strings.Join(q.Ignored, ", "),
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

// PagingStats is what a Server keeps for paging, as Server.PagingStats
// reports it.
type PagingStats struct {
	// Kept is the number of kept searches and $everything result sets.
	Kept int
	// Bytes is what they hold, as counted against -search-cache-bytes.
	Bytes int64
}

// PagingStats reports what the server keeps between pages. A search keeps
// its parameters only (its pages are found again from their position), so
// Bytes grows with the length of the queries being paged, not with their
// matches.
func (s *Server) PagingStats() PagingStats {
	n, b := s.pages.Stats(context.Background())
	return PagingStats{Kept: n, Bytes: b}
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
