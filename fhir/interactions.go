package fhir

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// request is one FHIR interaction, from a REST call or a Bundle entry.
type request struct {
	Method      string
	Type, ID    string
	VID         string
	Query       url.Values // search, or the condition of a conditional write
	Conditional bool       // PUT/DELETE by search
	IfMatch     string
	IfNoneExist string
	Lenient     bool
	Doc         *store.Doc // POST/PUT body
}

// response is what an interaction produced.
type response struct {
	Status  int
	Version *store.Version // written or read; nil for a no-op delete
	Body    []byte         // a Bundle for search entries
	Outcome *OperationOutcome
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)

func checkID(id string) error {
	if !idPattern.MatchString(id) {
		return errs.E("fhir.id", errs.Invalid, fmt.Sprintf("%q is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)", id))
	}
	return nil
}

// NewID returns a new server-assigned id: a time-ordered UUID, so that id
// order is creation order.
func NewID() string { return uuid.Must(uuid.NewV7()).String() }

// parseETag reads If-Match's W/"3" (or "3", or 3) as a version.
func parseETag(h string) (int64, error) {
	if h == "" {
		return 0, nil
	}
	v := strings.TrimPrefix(strings.TrimSpace(h), "W/")
	v = strings.Trim(v, `"`)
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 {
		return 0, errs.E("fhir.etag", errs.Invalid, fmt.Sprintf("If-Match %q is not a version ETag like W/\"1\"", h))
	}
	return n, nil
}

// apply carries out one interaction inside tx.
func (s *Server) apply(tx *store.Tx, rq *request) (*response, error) {
	switch rq.Method {
	case http.MethodGet:
		return s.applyGet(tx, rq)
	case http.MethodPost:
		return s.applyCreate(tx, rq)
	case http.MethodPut:
		return s.applyUpdate(tx, rq)
	case http.MethodDelete:
		return s.applyDelete(tx, rq)
	}
	return nil, errs.E("fhir.apply", errs.MethodNotAllowed, fmt.Sprintf("%s is not supported", rq.Method))
}

func (s *Server) applyGet(tx *store.Tx, rq *request) (*response, error) {
	a := AccessFrom(tx.Context())
	if err := a.mayRead(rq.Type); err != nil {
		return nil, err
	}
	if rq.ID != "" {
		if _, err := tx.Read(rq.Type, rq.ID); !errs.Is(err, errs.NotFound) {
			if err := s.visible(tx, a, rq.Type, rq.ID); err != nil {
				return nil, err
			}
		}
	}
	switch {
	case rq.ID == "":
		body, err := s.searchBundle(tx, rq.Type, rq.Query, rq.Lenient)
		if err != nil {
			return nil, err
		}
		return &response{Status: http.StatusOK, Body: body}, nil
	case rq.VID != "":
		vid, err := strconv.ParseInt(rq.VID, 10, 64)
		if err != nil || vid < 1 {
			return nil, errs.E("fhir.vread", errs.NotFound, fmt.Sprintf("%q is not a version id", rq.VID))
		}
		v, err := tx.VRead(rq.Type, rq.ID, vid)
		if err != nil {
			return &response{Version: v}, err
		}
		return &response{Status: http.StatusOK, Version: v}, nil
	}
	v, err := tx.Read(rq.Type, rq.ID)
	if err != nil {
		return &response{Version: v}, err
	}
	return &response{Status: http.StatusOK, Version: v}, nil
}

// matchCondition runs a conditional's search inside tx.
func (s *Server) matchCondition(tx *store.Tx, typ string, cond url.Values) ([]string, error) {
	if len(cond) == 0 {
		return nil, errs.E("fhir.conditional", errs.Invalid, "a conditional interaction needs search parameters")
	}
	q, err := s.reg.Parse(typ, cond, search.Options{Base: s.cfg.BaseURL})
	if err != nil {
		return nil, err
	}
	q.Compartment = s.readCompartment(AccessFrom(tx.Context()), typ)
	return tx.Search(q)
}

// conditionFrom parses If-None-Exist's value or a conditional URL's query:
// "identifier=x" or "Patient?identifier=x".
func conditionFrom(s string) (url.Values, error) {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		s = s[i+1:]
	}
	v, err := url.ParseQuery(s)
	if err != nil {
		return nil, errs.E("fhir.conditional", errs.Invalid, fmt.Sprintf("%q is not a search query", s))
	}
	return v, nil
}

func (s *Server) applyCreate(tx *store.Tx, rq *request) (*response, error) {
	if rq.IfNoneExist != "" {
		cond, err := conditionFrom(rq.IfNoneExist)
		if err != nil {
			return nil, err
		}
		ids, err := s.matchCondition(tx, rq.Type, cond)
		if err != nil {
			return nil, err
		}
		switch len(ids) {
		case 0:
		case 1:
			v, err := tx.Read(rq.Type, ids[0])
			if err != nil {
				return nil, err
			}
			if err := s.visible(tx, AccessFrom(tx.Context()), rq.Type, ids[0]); err != nil {
				return nil, err
			}
			return &response{Status: http.StatusOK, Version: v}, nil
		default:
			return nil, errs.E("fhir.create", errs.Precondition,
				fmt.Sprintf("If-None-Exist matched %d resources; it must match at most one", len(ids)))
		}
	}
	v, err := s.put(tx, rq.Doc, nil, store.PutOptions{CreateOnly: true})
	if err != nil {
		return nil, err
	}
	return &response{Status: http.StatusCreated, Version: v}, nil
}

// put checks access, runs the type's validators and writes the version.
func (s *Server) put(tx *store.Tx, doc *store.Doc, prev *store.Version, opts store.PutOptions) (*store.Version, error) {
	if err := s.writable(tx, AccessFrom(tx.Context()), doc, prev); err != nil {
		return nil, err
	}
	// A validator that amends the resource does so with Doc.Set, which
	// drops the prepared index entries: Put computes them again.
	for _, v := range s.validatorsFor(doc.Type) {
		if err := v(tx, doc, prev); err != nil {
			return nil, err
		}
	}
	return tx.Put(doc, opts)
}

func (s *Server) applyUpdate(tx *store.Tx, rq *request) (*response, error) {
	doc := rq.Doc
	id := rq.ID
	if rq.Conditional {
		ids, err := s.matchCondition(tx, rq.Type, rq.Query)
		if err != nil {
			return nil, err
		}
		switch len(ids) {
		case 0:
			if doc.ID == "" {
				doc.ID = NewID()
				doc.Entries = nil
			}
			id = doc.ID
		case 1:
			if doc.ID != "" && doc.ID != ids[0] {
				return nil, errs.E("fhir.update", errs.Invalid,
					fmt.Sprintf("the resource id %q differs from the id %q the condition matched", doc.ID, ids[0]))
			}
			if doc.ID != ids[0] {
				doc.ID = ids[0]
				doc.Entries = nil
			}
			id = ids[0]
		default:
			return nil, errs.E("fhir.update", errs.Precondition,
				fmt.Sprintf("the condition matched %d resources; it must match at most one", len(ids)))
		}
	}
	if err := checkID(id); err != nil {
		return nil, err
	}
	if doc.ID == "" {
		return nil, errs.E("fhir.update", errs.Invalid, "the resource in an update must have an id equal to the one in the URL")
	}
	if doc.ID != id {
		return nil, errs.E("fhir.update", errs.Invalid, fmt.Sprintf("the resource id %q does not match the URL id %q", doc.ID, id))
	}
	ifMatch, err := parseETag(rq.IfMatch)
	if err != nil {
		return nil, err
	}
	prev, err := tx.Read(rq.Type, id)
	switch {
	case errs.Is(err, errs.NotFound), errs.Is(err, errs.Gone):
		prev = nil
	case err != nil:
		return nil, err
	}
	v, err := s.put(tx, doc, prev, store.PutOptions{IfMatch: ifMatch})
	if err != nil {
		return nil, err
	}
	status := http.StatusOK
	if prev == nil {
		status = http.StatusCreated
	}
	return &response{Status: status, Version: v}, nil
}

func (s *Server) applyDelete(tx *store.Tx, rq *request) (*response, error) {
	id := rq.ID
	if rq.Conditional {
		ids, err := s.matchCondition(tx, rq.Type, rq.Query)
		if err != nil {
			return nil, err
		}
		switch len(ids) {
		case 0:
			return &response{Status: http.StatusOK, Outcome: Info("no resource matched the condition; nothing was deleted")}, nil
		case 1:
			id = ids[0]
		default:
			return nil, errs.E("fhir.delete", errs.Precondition,
				fmt.Sprintf("the condition matched %d resources; a conditional delete must match at most one", len(ids)))
		}
	}
	if err := checkID(id); err != nil {
		return nil, err
	}
	ifMatch, err := parseETag(rq.IfMatch)
	if err != nil {
		return nil, err
	}
	a := AccessFrom(tx.Context())
	if err := a.mayWrite(rq.Type); err != nil {
		return nil, err
	}
	if err := a.mayDeleteLinked(tx, rq.Type, id); err != nil {
		return nil, err
	}
	if p := a.compartment(); p != "" && !tx.InCompartment(rq.Type, id, p) {
		if _, err := tx.Read(rq.Type, id); err == nil {
			return nil, errs.E("fhir.access", errs.Permission, fmt.Sprintf("%s/%s is outside the compartment of Patient/%s", rq.Type, id, p))
		}
	}
	v, err := tx.Delete(rq.Type, id, ifMatch)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return &response{Status: http.StatusOK, Outcome: Info(fmt.Sprintf("%s/%s does not exist or was already deleted", rq.Type, id))}, nil
	}
	return &response{Status: http.StatusOK, Version: v, Outcome: Info(fmt.Sprintf("deleted %s/%s (version %d)", rq.Type, id, v.VersionID))}, nil
}

// ParseResource decodes and structurally validates a resource body of type
// typ (any type when empty), as the REST API does for a create or update.
func (s *Server) ParseResource(body []byte, typ string) (*store.Doc, error) {
	return s.parseResource(body, typ)
}

// Put writes doc inside tx as the REST API's update would: the request's
// access rights (from tx's context) and the type's validators apply, and a
// non-zero ifMatch must be the current version. It creates the resource
// when it does not exist. Domain packages use it for the writes they make
// on a user's behalf (a job moving a Task, an ingested page).
func (s *Server) Put(tx *store.Tx, doc *store.Doc, ifMatch int64) (*store.Version, error) {
	if err := checkID(doc.ID); err != nil {
		return nil, err
	}
	prev, err := tx.Read(doc.Type, doc.ID)
	switch {
	case errs.Is(err, errs.NotFound), errs.Is(err, errs.Gone):
		prev = nil
	case err != nil:
		return nil, err
	}
	return s.put(tx, doc, prev, store.PutOptions{IfMatch: ifMatch})
}
