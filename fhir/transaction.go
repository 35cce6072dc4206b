package fhir

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

type wireBundle struct {
	ResourceType string `json:"resourceType"`
	Type         string `json:"type"`
	Entry        []struct {
		FullURL  string          `json:"fullUrl"`
		Resource json.RawMessage `json:"resource"`
		Request  *EntryRequest   `json:"request"`
	} `json:"entry"`
}

// txEntry is one entry of a transaction or batch being processed.
type txEntry struct {
	index   int
	fullURL string
	method  string
	typ     string
	id      string
	vid     string
	query   url.Values
	cond    bool
	ifMatch string
	ifNone  string
	raw     []byte
	res     *response
}

// bundle serves POST [base] with a transaction or batch Bundle.
func (s *Server) bundle(w http.ResponseWriter, r *http.Request) {
	if err := checkContentType(r); err != nil {
		WriteError(w, r, err)
		return
	}
	body, err := readBody(w, r, s.cfg.MaxBody)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	m, err := decodeJSON(body)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	if rt, _ := m["resourceType"].(string); rt != "Bundle" {
		WriteError(w, r, errs.E("fhir.bundle", errs.Invalid, "POST to the base takes a Bundle of type transaction or batch"))
		return
	}
	if _, err := s.docFrom(m, body, "Bundle"); err != nil {
		WriteError(w, r, err)
		return
	}
	var wb wireBundle
	if err := json.Unmarshal(body, &wb); err != nil {
		WriteError(w, r, errs.E("fhir.bundle", errs.Invalid, "the Bundle could not be read", err))
		return
	}
	entries, err := s.parseEntries(&wb)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	ret, _ := prefer(r)
	switch wb.Type {
	case "transaction":
		err = s.transaction(r, entries)
	case "batch":
		s.batch(r, entries)
	default:
		err = errs.E("fhir.bundle", errs.Invalid, fmt.Sprintf("a Bundle of type %q cannot be processed; use transaction or batch", wb.Type))
	}
	if err != nil {
		WriteError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.responseBundle(wb.Type+"-response", entries, ret == "representation"))
}

func (s *Server) parseEntries(wb *wireBundle) ([]*txEntry, error) {
	out := make([]*txEntry, len(wb.Entry))
	for i, e := range wb.Entry {
		fail := func(format string, args ...any) error {
			return errs.E("fhir.bundle", errs.Invalid, fmt.Sprintf("entry %d: ", i)+fmt.Sprintf(format, args...))
		}
		if e.Request == nil || e.Request.Method == "" || e.Request.URL == "" {
			return nil, fail("request.method and request.url are required")
		}
		te := &txEntry{index: i, fullURL: e.FullURL, method: strings.ToUpper(e.Request.Method),
			ifMatch: e.Request.IfMatch, ifNone: e.Request.IfNoneExist, raw: e.Resource}
		u := strings.TrimPrefix(e.Request.URL, s.cfg.BaseURL+"/")
		path, rawQuery, hasQuery := strings.Cut(u, "?")
		parts := strings.Split(strings.Trim(path, "/"), "/")
		te.typ = parts[0]
		if !s.model.IsResource(te.typ) {
			return nil, fail("%q does not name a resource type", e.Request.URL)
		}
		switch {
		case len(parts) == 2:
			te.id = parts[1]
		case len(parts) == 4 && parts[2] == "_history":
			te.id, te.vid = parts[1], parts[3]
		case len(parts) != 1:
			return nil, fail("%q is not a URL this server can process in a Bundle", e.Request.URL)
		}
		if hasQuery {
			q, err := url.ParseQuery(rawQuery)
			if err != nil {
				return nil, fail("the query of %q cannot be parsed", e.Request.URL)
			}
			te.query = q
		}
		switch te.method {
		case http.MethodGet:
		case http.MethodPost:
			if te.id != "" || len(e.Resource) == 0 {
				return nil, fail("POST takes a resource and a type URL")
			}
		case http.MethodPut:
			if len(e.Resource) == 0 || (te.id == "" && !hasQuery) {
				return nil, fail("PUT takes a resource and a Type/id or conditional URL")
			}
			te.cond = te.id == ""
		case http.MethodDelete:
			if te.id == "" && !hasQuery {
				return nil, fail("DELETE takes a Type/id or conditional URL")
			}
			te.cond = te.id == ""
		default:
			return nil, fail("method %s is not supported in a Bundle", te.method)
		}
		out[i] = te
	}
	return out, nil
}

// processing order of a transaction (FHIR R4 3.1.0.11.2).
var methodOrder = map[string]int{http.MethodDelete: 0, http.MethodPost: 1, http.MethodPut: 2, http.MethodGet: 3}

// transaction processes all entries in one store transaction: all or
// nothing. urn:uuid (and other fullUrl) references between entries are
// rewritten to the ids the server assigns.
func (s *Server) transaction(r *http.Request, entries []*txEntry) error {
	ids := make([]string, len(entries))
	for i := range ids {
		ids[i] = NewID()
	}
	ordered := append([]*txEntry(nil), entries...)
	sort.SliceStable(ordered, func(a, b int) bool { return methodOrder[ordered[a].method] < methodOrder[ordered[b].method] })
	return s.store.Write(detachedContext(r.Context()), func(tx *store.Tx) error {
		// 1. Decide the id of every created or conditionally updated entry.
		refs := map[string]string{}
		targets := map[int]string{}
		skip := map[int]*response{}
		for _, e := range entries {
			e.res = nil
			var target string
			switch {
			case e.method == http.MethodPost:
				target = e.typ + "/" + ids[e.index]
				if e.ifNone != "" {
					cond, err := conditionFrom(e.ifNone)
					if err != nil {
						return entryErr(e, err)
					}
					found, err := s.matchCondition(tx, e.typ, cond)
					if err != nil {
						return entryErr(e, err)
					}
					if len(found) > 1 {
						return entryErr(e, errs.E("fhir.transaction", errs.Precondition, fmt.Sprintf("ifNoneExist matched %d resources", len(found))))
					}
					if len(found) == 1 {
						v, err := tx.Read(e.typ, found[0])
						if err != nil {
							return entryErr(e, err)
						}
						skip[e.index] = &response{Status: http.StatusOK, Version: v}
						target = e.typ + "/" + found[0]
					}
				}
			case e.method == http.MethodPut && e.cond:
				found, err := s.matchCondition(tx, e.typ, e.query)
				if err != nil {
					return entryErr(e, err)
				}
				switch len(found) {
				case 0:
					target = e.typ + "/" + ids[e.index]
				case 1:
					target = e.typ + "/" + found[0]
				default:
					return entryErr(e, errs.E("fhir.transaction", errs.Precondition, fmt.Sprintf("the condition matched %d resources", len(found))))
				}
			case e.method == http.MethodPut:
				target = e.typ + "/" + e.id
			}
			targets[e.index] = target
			if target != "" && e.fullURL != "" {
				refs[e.fullURL] = target
			}
		}
		// 2. Process in FHIR's order.
		for _, e := range ordered {
			if res, ok := skip[e.index]; ok {
				e.res = res
				continue
			}
			rq := &request{Method: e.method, Type: e.typ, ID: e.id, VID: e.vid, Query: e.query, Conditional: e.cond, IfMatch: e.ifMatch}
			if e.method == http.MethodPost || e.method == http.MethodPut {
				raw, err := s.resolveReferences(tx, e.raw, refs)
				if err != nil {
					return entryErr(e, err)
				}
				// The whole Bundle was validated before; rewriting references
				// replaced strings with strings, so decoding is enough here.
				m, err := decodeJSON(raw)
				if err != nil {
					return entryErr(e, err)
				}
				if rt, _ := m["resourceType"].(string); rt != e.typ {
					return entryErr(e, errs.E("fhir.transaction", errs.Invalid, fmt.Sprintf("the resource is a %s but request.url is for %s", rt, e.typ)))
				}
				id, _ := m["id"].(string)
				doc := &store.Doc{Type: e.typ, ID: id, Map: m, JSON: raw}
				if e.method == http.MethodPost {
					doc.ID = ids[e.index]
				} else if e.cond {
					// The condition was resolved in step 1; the body may omit the id.
					target := strings.TrimPrefix(targets[e.index], e.typ+"/")
					if doc.ID != "" && doc.ID != target {
						return entryErr(e, errs.E("fhir.transaction", errs.Invalid,
							fmt.Sprintf("the resource id %q differs from the id %q the condition matched", doc.ID, target)))
					}
					doc.ID = target
					rq.Conditional, rq.ID = false, doc.ID
				}
				rq.Doc = doc
			}
			res, err := s.apply(tx, rq)
			if err != nil {
				return entryErr(e, err)
			}
			e.res = res
		}
		return nil
	})
}

func entryErr(e *txEntry, err error) error {
	msg, issues := errs.Public(err)
	return errs.E("fhir.transaction", errs.KindOf(err), fmt.Sprintf("entry %d (%s %s): %s; nothing was written", e.index, e.method, e.typ, msg), issues, err)
}

// resolveReferences rewrites, in a resource's JSON, every string equal to
// the fullUrl of another entry into the reference the server assigned, and
// every conditional reference ("Patient?identifier=x") into the one
// resource it matches.
func (s *Server) resolveReferences(tx *store.Tx, raw []byte, refs map[string]string) ([]byte, error) {
	out := raw
	for from, to := range refs {
		q, _ := json.Marshal(from)
		if bytes.Contains(out, q) {
			r, _ := json.Marshal(to)
			out = bytes.ReplaceAll(out, q, r)
		}
	}
	// Conditional references.
	if !bytes.Contains(out, []byte(`"reference"`)) || !bytes.Contains(out, []byte("?")) {
		return out, nil
	}
	m, err := decodeJSON(out)
	if err != nil {
		return nil, err
	}
	var conds []string
	walkReferences(m, func(ref string) {
		if i := strings.IndexByte(ref, '?'); i > 0 && s.model.IsResource(ref[:i]) {
			conds = append(conds, ref)
		}
	})
	for _, ref := range conds {
		typ, rawQuery, _ := strings.Cut(ref, "?")
		cond, err := url.ParseQuery(rawQuery)
		if err != nil {
			return nil, errs.E("fhir.transaction", errs.Invalid, fmt.Sprintf("conditional reference %q cannot be parsed", ref))
		}
		found, err := s.matchCondition(tx, typ, cond)
		if err != nil {
			return nil, err
		}
		if len(found) != 1 {
			return nil, errs.E("fhir.transaction", errs.Precondition,
				fmt.Sprintf("conditional reference %q matched %d resources; it must match exactly one", ref, len(found)))
		}
		q, _ := json.Marshal(ref)
		r, _ := json.Marshal(typ + "/" + found[0])
		out = bytes.ReplaceAll(out, q, r)
	}
	return out, nil
}

func walkReferences(v any, fn func(string)) {
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			if s, ok := c.(string); ok && k == "reference" {
				fn(s)
				continue
			}
			walkReferences(c, fn)
		}
	case []any:
		for _, c := range x {
			walkReferences(c, fn)
		}
	}
}

// batch processes each entry on its own; a failure is that entry's
// response and does not affect the others.
func (s *Server) batch(r *http.Request, entries []*txEntry) {
	for _, e := range entries {
		rq := &request{Method: e.method, Type: e.typ, ID: e.id, VID: e.vid, Query: e.query, Conditional: e.cond, IfMatch: e.ifMatch, IfNoneExist: e.ifNone}
		var err error
		if e.method == http.MethodPost || e.method == http.MethodPut {
			var doc *store.Doc
			doc, err = s.parseResource(e.raw, e.typ)
			if err == nil {
				if e.method == http.MethodPost {
					doc.ID = NewID()
				}
				rq.Doc = doc
			}
		}
		if err == nil {
			fn := func(tx *store.Tx) error {
				res, err := s.apply(tx, rq)
				e.res = res
				return err
			}
			if e.method == http.MethodGet {
				err = s.store.View(r.Context(), fn)
			} else {
				err = s.store.Write(detachedContext(r.Context()), fn)
			}
		}
		if err != nil {
			status, oo := Outcome(err)
			e.res = &response{Status: status, Outcome: oo}
		}
	}
}

func (s *Server) responseBundle(typ string, entries []*txEntry, withResource bool) *Bundle {
	b := newBundle(typ)
	for _, e := range entries {
		res := e.res
		be := BundleEntry{Response: &EntryResponse{Status: fmt.Sprintf("%d %s", res.Status, http.StatusText(res.Status))}}
		if v := res.Version; v != nil && res.Body == nil {
			be.FullURL = s.fullURL(v)
			be.Response.Etag = fmt.Sprintf(`W/"%d"`, v.VersionID)
			be.Response.LastModified = v.LastUpdated.Format(time.RFC3339Nano)
			if e.method != http.MethodGet {
				be.Response.Location = fmt.Sprintf("%s/%s/_history/%d", v.Type, v.ID, v.VersionID)
			}
			if !v.Deleted && (withResource || e.method == http.MethodGet) {
				be.Resource = v.JSON
			}
		}
		if res.Body != nil {
			be.Resource = res.Body
		}
		if res.Outcome != nil {
			be.Response.Outcome, _ = json.Marshal(res.Outcome)
		}
		b.Entry = append(b.Entry, be)
	}
	return b
}
