package fhir

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// prefer reads the Prefer header's return and handling preferences.
func prefer(r *http.Request) (ret string, lenient bool) {
	for _, h := range r.Header.Values("Prefer") {
		for _, part := range strings.Split(h, ";") {
			k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
			v = strings.Trim(v, `"`)
			switch strings.ToLower(k) {
			case "return":
				ret = v
			case "handling":
				lenient = v == "lenient"
			}
		}
	}
	return ret, lenient
}

// do runs one interaction in a write (or read) transaction and answers.
func (s *Server) do(w http.ResponseWriter, r *http.Request, rq *request) {
	var res *response
	fn := func(tx *store.Tx) error {
		var err error
		res, err = s.apply(tx, rq)
		return err
	}
	var err error
	if rq.Method == http.MethodGet {
		err = s.store.View(r.Context(), fn)
	} else {
		// A client that goes away before its write's turn cancels it.
		// A write of one resource reads its current version first.
		var reads []store.Key
		switch {
		case rq.Conditional:
		case rq.ID != "":
			reads = []store.Key{{Type: rq.Type, ID: rq.ID}}
		case rq.Doc != nil && rq.Doc.ID != "":
			reads = []store.Key{{Type: rq.Type, ID: rq.Doc.ID}}
		}
		err = s.store.WriteReading(r.Context(), reads, fn)
	}
	if err != nil {
		if res != nil && res.Version != nil && errs.Is(err, errs.Gone) {
			setVersionHeaders(w, res.Version)
		}
		WriteError(w, r, err)
		return
	}
	s.respond(w, r, res)
}

// setVersionHeaders sets ETag (W/"<versionId>") and Last-Modified (an
// HTTP date) for v. It is on every read's path: the header keys are
// given in their canonical form, and the values built without fmt.
func setVersionHeaders(w http.ResponseWriter, v *store.Version) {
	var buf [64]byte
	b := strconv.AppendInt(append(buf[:0], `W/"`...), v.VersionID, 10)
	b = append(b, '"')
	n := len(b)
	both := string(appendHTTPDate(b, v.LastUpdated))
	vals := make([]string, 2)
	vals[0], vals[1] = both[:n], both[n:]
	h := w.Header()
	h["Etag"] = vals[0:1:1]
	h["Last-Modified"] = vals[1:2:2]
}

// appendHTTPDate appends t as an HTTP date, in UTC, as
// t.UTC().AppendFormat(b, http.TimeFormat) would ("Mon, 02 Jan 2006
// 15:04:05 GMT", RFC 9110 section 5.6.7) for the years 0 to 9999, without
// the general layout's parsing: every read sends one.
func appendHTTPDate(b []byte, t time.Time) []byte {
	t = t.UTC()
	yy, mm, dd := t.Date()
	hh, mn, ss := t.Clock()
	if yy < 0 || yy > 9999 {
		return t.AppendFormat(b, http.TimeFormat)
	}
	const days, months = "SunMonTueWedThuFriSat", "JanFebMarAprMayJunJulAugSepOctNovDec"
	wd := int(t.Weekday())
	b = append(b, days[3*wd:3*wd+3]...)
	b = append(b, ',', ' ', byte('0'+dd/10), byte('0'+dd%10), ' ')
	b = append(b, months[3*(mm-1):3*mm]...)
	b = append(b, ' ', byte('0'+yy/1000), byte('0'+yy/100%10), byte('0'+yy/10%10), byte('0'+yy%10), ' ',
		byte('0'+hh/10), byte('0'+hh%10), ':', byte('0'+mn/10), byte('0'+mn%10), ':', byte('0'+ss/10), byte('0'+ss%10))
	return append(b, " GMT"...)
}

func (s *Server) location(v *store.Version) string {
	return fmt.Sprintf("%s/%s/%s/_history/%d", s.cfg.BaseURL, v.Type, v.ID, v.VersionID)
}

// respond writes an interaction's outcome honouring Prefer: return.
func (s *Server) respond(w http.ResponseWriter, r *http.Request, res *response) {
	ret, _ := prefer(r)
	if res.Body != nil {
		writeBody(w, res.Status, res.Body)
		return
	}
	if v := res.Version; v != nil {
		setVersionHeaders(w, v)
		if r.Method == http.MethodPost || r.Method == http.MethodPut {
			w.Header().Set("Location", s.location(v))
		}
	}
	switch {
	case res.Version == nil || res.Version.Deleted:
		oo := res.Outcome
		if oo == nil {
			oo = Info("done")
		}
		if ret == "minimal" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeJSON(w, res.Status, oo)
	case r.Method == http.MethodGet || ret == "" || ret == "representation":
		writeBody(w, res.Status, res.Version.JSON)
	case ret == "OperationOutcome":
		verb := "updated"
		if res.Status == http.StatusCreated {
			verb = "created"
		}
		writeJSON(w, res.Status, Info(fmt.Sprintf("%s %s/%s version %d", verb, res.Version.Type, res.Version.ID, res.Version.VersionID)))
	default: // minimal
		w.WriteHeader(res.Status)
	}
}

func (s *Server) read(w http.ResponseWriter, r *http.Request) {
	typ, id := chi.URLParam(r, "type"), chi.URLParam(r, "id")
	if err := checkID(id); err != nil {
		WriteError(w, r, errs.E("fhir.read", errs.NotFound, err))
		return
	}
	s.readShaped(w, r, &request{Method: http.MethodGet, Type: typ, ID: id})
}

func (s *Server) vread(w http.ResponseWriter, r *http.Request) {
	typ, id := chi.URLParam(r, "type"), chi.URLParam(r, "id")
	if err := checkID(id); err != nil {
		WriteError(w, r, errs.E("fhir.vread", errs.NotFound, err))
		return
	}
	s.readShaped(w, r, &request{Method: http.MethodGet, Type: typ, ID: id, VID: chi.URLParam(r, "vid")})
}

// readShaped serves a read or vread, applying _summary and _elements when
// asked (FHIR R4 search.html#summary and #elements apply to read as to
// search): the resource cut down as a search would return it, with the
// SUBSETTED tag. _summary=count is for searches only and is refused, as is
// an _elements naming no element of the type: what is asked is done or
// refused, never ignored.
func (s *Server) readShaped(w http.ResponseWriter, r *http.Request, rq *request) {
	shape := url.Values{}
	if r.URL.RawQuery != "" {
		query := r.URL.Query()
		for _, k := range []string{"_summary", "_elements"} {
			if vs, ok := query[k]; ok {
				shape[k] = vs
			}
		}
	}
	if len(shape) == 0 || !s.model.IsResource(rq.Type) {
		s.do(w, r, rq)
		return
	}
	q, err := s.reg.Parse(rq.Type, shape, search.Options{Base: s.cfg.BaseURL})
	if err == nil && q.Summary == "count" {
		err = errs.E("fhir.read", errs.Invalid, "_summary=count is for searches; a read returns the resource (use _summary=true, text, data or false)")
	}
	if err != nil {
		WriteError(w, r, err)
		return
	}
	var res *response
	err = s.store.View(r.Context(), func(tx *store.Tx) error {
		var err error
		res, err = s.apply(tx, rq)
		return err
	})
	if err != nil {
		if res != nil && res.Version != nil && errs.Is(err, errs.Gone) {
			setVersionHeaders(w, res.Version)
		}
		WriteError(w, r, err)
		return
	}
	if res.Body != nil || res.Version == nil || res.Version.Deleted {
		s.respond(w, r, res)
		return
	}
	body, err := s.shapeResource(res.Version.JSON, rq.Type, q.Summary, q.Elements)
	if err != nil {
		WriteError(w, r, err)
		return
	}
	setVersionHeaders(w, res.Version)
	writeBody(w, res.Status, body)
}

// body reads and parses the resource of a create or update.
func (s *Server) body(w http.ResponseWriter, r *http.Request, typ string) (*store.Doc, bool) {
	if err := checkContentType(r); err != nil {
		WriteError(w, r, err)
		return nil, false
	}
	raw, err := readBody(w, r, s.cfg.MaxBody)
	if err != nil {
		WriteError(w, r, err)
		return nil, false
	}
	doc, err := s.parseResource(raw, typ)
	if err == nil {
		err = s.refuseConditionalRefs(doc.JSON, doc.Type)
	}
	if err != nil {
		WriteError(w, r, err)
		return nil, false
	}
	return doc, true
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	typ := chi.URLParam(r, "type")
	doc, ok := s.body(w, r, typ)
	if !ok {
		return
	}
	doc.ID = NewID() // the server assigns ids on create; a client id is ignored
	s.store.Prepare(doc)
	s.do(w, r, &request{Method: http.MethodPost, Type: typ, Doc: doc, IfNoneExist: r.Header.Get("If-None-Exist")})
}

func (s *Server) update(w http.ResponseWriter, r *http.Request) {
	typ, id := chi.URLParam(r, "type"), chi.URLParam(r, "id")
	if err := checkID(id); err != nil {
		WriteError(w, r, err)
		return
	}
	doc, ok := s.body(w, r, typ)
	if !ok {
		return
	}
	if doc.ID == id {
		s.store.Prepare(doc)
	}
	s.do(w, r, &request{Method: http.MethodPut, Type: typ, ID: id, Doc: doc, IfMatch: r.Header.Get("If-Match")})
}

func (s *Server) conditionalUpdate(w http.ResponseWriter, r *http.Request) {
	typ := chi.URLParam(r, "type")
	doc, ok := s.body(w, r, typ)
	if !ok {
		return
	}
	s.do(w, r, &request{Method: http.MethodPut, Type: typ, Doc: doc, Query: searchParams(r.URL.Query()), Conditional: true, IfMatch: r.Header.Get("If-Match")})
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	typ, id := chi.URLParam(r, "type"), chi.URLParam(r, "id")
	if err := checkID(id); err != nil {
		WriteError(w, r, errs.E("fhir.delete", errs.NotFound, err))
		return
	}
	s.do(w, r, &request{Method: http.MethodDelete, Type: typ, ID: id, IfMatch: r.Header.Get("If-Match")})
}

func (s *Server) conditionalDelete(w http.ResponseWriter, r *http.Request) {
	typ := chi.URLParam(r, "type")
	s.do(w, r, &request{Method: http.MethodDelete, Type: typ, Query: searchParams(r.URL.Query()), Conditional: true})
}

// searchParams drops the format parameters that are not search criteria.
func searchParams(q url.Values) url.Values {
	out := url.Values{}
	for k, v := range q {
		if k == "_format" || k == "_pretty" {
			continue
		}
		out[k] = v
	}
	return out
}

func (s *Server) search(w http.ResponseWriter, r *http.Request) {
	s.runSearch(w, r, chi.URLParam(r, "type"), r.URL.Query())
}

func (s *Server) searchPost(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		WriteError(w, r, errs.E("fhir.search", errs.UnsupportedMedia, "_search takes application/x-www-form-urlencoded parameters"))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBody)
	if err := r.ParseForm(); err != nil {
		WriteError(w, r, errs.E("fhir.search", errs.Invalid, "the search form could not be read", err))
		return
	}
	// URL and body parameters together, as FHIR allows.
	s.runSearch(w, r, chi.URLParam(r, "type"), r.Form)
}

func (s *Server) runSearch(w http.ResponseWriter, r *http.Request, typ string, params url.Values) {
	_, lenient := prefer(r)
	var body []byte
	// A search too long for its links is kept in the database, written
	// once the read has ended, before the answer that links to it.
	ctx, kept := withKeptSets(r.Context())
	err := s.store.View(ctx, func(tx *store.Tx) error {
		var err error
		if c := params.Get("_cursor"); c != "" {
			body, err = s.searchPage(tx, typ, c)
			return err
		}
		body, err = s.searchBundle(tx, typ, searchParams(params), lenient)
		return err
	})
	if err == nil {
		err = s.pages.flush(r.Context(), kept)
	}
	if err != nil {
		WriteError(w, r, err)
		return
	}
	writeBody(w, http.StatusOK, body)
}

func (s *Server) history(w http.ResponseWriter, r *http.Request, typ, id string) {
	q := r.URL.Query()
	hq := store.HistoryQuery{Type: typ, ID: id, Count: s.cfg.DefaultCount}
	if c := q.Get("_count"); c != "" {
		n, err := parsePositive("_count", c)
		if err != nil {
			WriteError(w, r, err)
			return
		}
		hq.Count = min(n, s.cfg.MaxCount)
	}
	if v := q.Get("_since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			WriteError(w, r, errs.E("fhir.history", errs.Invalid, fmt.Sprintf("_since %q is not an instant like 2024-01-02T15:04:05Z", v)))
			return
		}
		hq.Since = t
	}
	if v := q.Get("_cursor"); v != "" {
		n, err := parsePositive("_cursor", v)
		if err != nil {
			WriteError(w, r, err)
			return
		}
		hq.Before = uint64(n)
	}
	var page *store.HistoryPage
	err := s.store.View(r.Context(), func(tx *store.Tx) error {
		a := AccessFrom(tx.Context())
		switch {
		case id != "":
			// Instance history is a read (r), type and system history a
			// search (s), as SMART App Launch 2 assigns them.
			if err := s.policy.Need(a, typ, authz.Read); err != nil {
				return err
			}
			if _, err := s.policy.Current(tx, a, typ, id); errs.Is(err, errs.NotFound) {
				return err
			}
		case a.Member():
			return errs.E("fhir.history", errs.Permission, "type and system history are not available to member-scoped tokens")
		case typ != "":
			if err := s.policy.Need(a, typ, authz.Search); err != nil {
				return err
			}
		default:
			if !a.Allows("*", authz.Search) {
				return errs.E("fhir.history", errs.Permission, "system history needs a token that may search every type (*.s)")
			}
		}
		var err error
		if page, err = tx.History(hq); err != nil || a == nil {
			return err
		}
		// Each version on its own: a resource can change hands.
		sees := s.policy.Seer(tx, a)
		kept := page.Versions[:0]
		for _, v := range page.Versions {
			if sees(v) {
				kept = append(kept, v)
			}
		}
		if len(kept) < len(page.Versions) && page.Total >= 0 {
			page.Total = s.visibleVersions(tx, typ, id, hq, sees)
		}
		page.Versions = kept
		return nil
	})
	if err != nil {
		WriteError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, s.historyBundle(r, page, hq))
}

// visibleVersions counts the versions of typ/id in hq's window that sees
// allows, for the total of an instance history some of whose versions are
// hidden.
func (s *Server) visibleVersions(tx *store.Tx, typ, id string, hq store.HistoryQuery, sees func(*store.Version) bool) int {
	vid, _, ok := tx.CurrentVersion(typ, id)
	if !ok {
		return 0
	}
	n := 0
	for ; vid >= 1; vid-- {
		v, _ := tx.VRead(typ, id, vid)
		if v != nil && (hq.Since.IsZero() || !v.LastUpdated.Before(hq.Since)) && sees(v) {
			n++
		}
	}
	return n
}

func (s *Server) systemHistory(w http.ResponseWriter, r *http.Request) { s.history(w, r, "", "") }
func (s *Server) typeHistory(w http.ResponseWriter, r *http.Request) {
	s.history(w, r, chi.URLParam(r, "type"), "")
}
func (s *Server) instanceHistory(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	if err := checkID(id); err != nil {
		WriteError(w, r, errs.E("fhir.history", errs.NotFound, err))
		return
	}
	s.history(w, r, chi.URLParam(r, "type"), id)
}

func parsePositive(name, v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, errs.E("fhir.param", errs.Invalid, fmt.Sprintf("%s must be a whole number of at least 1", name))
	}
	return n, nil
}
