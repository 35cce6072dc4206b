package fhir

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/p2pserver/p2pserver/fhir/authz"
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
	// pending reports references to resources the same transaction
	// writes (nil outside a transaction).
	pending func(ref string) bool
	// assigned says the server chose ID for a conditional update that
	// matched nothing (in a transaction): a create, not an
	// update-as-create.
	assigned bool
}

// response is what an interaction produced.
type response struct {
	Status  int
	Version *store.Version // written or read; nil for a no-op delete
	Body    []byte         // a Bundle for search entries
	Outcome *OperationOutcome
}

// validID reports whether id is a FHIR id: 1 to 64 of A-Z a-z 0-9 - .
// (FHIR R4 datatypes.html#id). Every read checks its id, so this is a
// loop over the bytes rather than a regular expression.
func validID(id string) bool {
	if len(id) < 1 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '.':
		default:
			return false
		}
	}
	return true
}

func checkID(id string) error {
	if !validID(id) {
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
	switch {
	case rq.ID == "":
		body, err := s.searchBundle(tx, rq.Type, rq.Query, rq.Lenient)
		if err != nil {
			return nil, err
		}
		return &response{Status: http.StatusOK, Body: body}, nil
	case rq.VID != "":
		if err := s.policy.Need(a, rq.Type, authz.Read); err != nil {
			return nil, err
		}
		vid, err := strconv.ParseInt(rq.VID, 10, 64)
		if err != nil || vid < 1 {
			return nil, errs.E("fhir.vread", errs.NotFound, fmt.Sprintf("%q is not a version id", rq.VID))
		}
		v, err := tx.VRead(rq.Type, rq.ID, vid)
		if v != nil && !s.policy.CanSee(tx, a, v) {
			// Each version on its own: a resource can change hands.
			return nil, authz.NoVersion(rq.Type, rq.ID, vid)
		}
		if err != nil {
			return &response{Version: v}, err
		}
		return &response{Status: http.StatusOK, Version: v}, nil
	}
	if err := s.policy.Need(a, rq.Type, authz.Read); err != nil {
		return nil, err
	}
	v, err := s.policy.Current(tx, a, rq.Type, rq.ID)
	if err != nil {
		return &response{Version: v}, err
	}
	return &response{Status: http.StatusOK, Version: v}, nil
}

// matchCondition runs a conditional's search inside tx, as the request's
// principal would search (it needs s on the type, and finds only what the
// principal may see).
func (s *Server) matchCondition(tx *store.Tx, typ string, cond url.Values) ([]string, error) {
	a := AccessFrom(tx.Context())
	if err := s.policy.Need(a, typ, authz.Search); err != nil {
		return nil, err
	}
	if len(cond) == 0 {
		return nil, errs.E("fhir.conditional", errs.Invalid, "a conditional interaction needs search parameters")
	}
	q, err := s.reg.Parse(typ, cond, search.Options{Base: s.cfg.BaseURL})
	if err != nil {
		return nil, err
	}
	s.policy.Confine(tx, a, q)
	ids, err := tx.Search(q)
	if err != nil {
		return nil, err
	}
	return s.policy.Filter(tx, a, typ, ids)
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
	if err := s.policy.Need(AccessFrom(tx.Context()), rq.Type, authz.Create); err != nil {
		return nil, err
	}
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
			return &response{Status: http.StatusOK, Version: v}, nil
		default:
			return nil, errs.E("fhir.create", errs.Precondition,
				fmt.Sprintf("If-None-Exist matched %d resources; it must match at most one", len(ids)))
		}
	}
	v, err := s.put(tx, rq.Doc, nil, store.PutOptions{CreateOnly: true}, rq.pending)
	if err != nil {
		return nil, err
	}
	return &response{Status: http.StatusCreated, Version: v}, nil
}

// put checks the write against the policy, runs the type's validators and
// writes the version. before is the current version, a deletion included
// (a deleted resource keeps its owner); nil when there is none. pending
// names the references to resources the same transaction writes.
func (s *Server) put(tx *store.Tx, doc *store.Doc, before *store.Version, opts store.PutOptions, pending func(string) bool) (*store.Version, error) {
	if a := AccessFrom(tx.Context()); a != nil {
		if a.Member() && doc.Entries == nil {
			s.store.Prepare(doc)
		}
		if err := s.policy.MayWrite(tx, a, before, doc, pending); err != nil {
			return nil, err
		}
	}
	prev := before
	if prev != nil && prev.Deleted {
		prev = nil
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
	a := AccessFrom(tx.Context())
	if err := s.policy.Need(a, rq.Type, authz.Update); err != nil {
		return nil, err
	}
	doc := rq.Doc
	id := rq.ID
	assigned := rq.assigned // the server chose the id: a create, not an update-as-create
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
				assigned = true
			} else if err := s.noUnmatchedOverwrite(tx, rq.Type, doc.ID); err != nil {
				return nil, err
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
	before, err := s.policy.Current(tx, a, rq.Type, id)
	switch {
	case errs.Is(err, errs.NotFound):
		if !assigned && !s.policy.MayChooseID(a, rq.Type) {
			// An id that is another's answers as one that does not
			// exist, and neither is created.
			return nil, err
		}
		before = nil
	case errs.Is(err, errs.Gone):
	case err != nil:
		return nil, err
	}
	ifMatch, err := parseETag(rq.IfMatch)
	if err != nil {
		return nil, err
	}
	v, err := s.put(tx, doc, before, store.PutOptions{IfMatch: ifMatch}, rq.pending)
	if err != nil {
		return nil, err
	}
	status := http.StatusOK
	if before == nil || before.Deleted {
		status = http.StatusCreated
	}
	return &response{Status: status, Version: v}, nil
}

func (s *Server) applyDelete(tx *store.Tx, rq *request) (*response, error) {
	a := AccessFrom(tx.Context())
	if err := s.policy.Need(a, rq.Type, authz.Delete); err != nil {
		return nil, err
	}
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
	prev, err := s.policy.Current(tx, a, rq.Type, id)
	switch {
	case errs.Is(err, errs.NotFound), errs.Is(err, errs.Gone):
		// Never there, already deleted, or not the requester's: one answer.
		if ifMatch != 0 {
			return nil, errs.E("fhir.delete", errs.Precondition, fmt.Sprintf("%s/%s does not exist", rq.Type, id))
		}
		return &response{Status: http.StatusOK, Outcome: Info(fmt.Sprintf("%s/%s does not exist or was already deleted", rq.Type, id))}, nil
	case err != nil:
		return nil, err
	}
	if err := s.policy.MayWrite(tx, a, prev, nil, nil); err != nil {
		return nil, err
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
	var before *store.Version
	if _, _, ok := tx.CurrentVersion(doc.Type, doc.ID); ok {
		// Not asked of a new resource (an ingested chunk's thousand):
		// its NotFound error would be made only to be dropped.
		var err error
		before, err = tx.Read(doc.Type, doc.ID)
		switch {
		case errs.Is(err, errs.NotFound):
			before = nil
		case errs.Is(err, errs.Gone):
		case err != nil:
			return nil, err
		}
	}
	return s.put(tx, doc, before, store.PutOptions{IfMatch: ifMatch}, nil)
}

// noUnmatchedOverwrite refuses a conditional update that matched nothing
// but names, in its resource, the id of a resource that exists: R4's "no
// matches, id provided" is an update as create (http.html#cond-update),
// a create with the client's id; writing over an existing resource the
// condition did not match would replace what the client did not ask to
// replace. FHIR R5 says so explicitly: "No matches, id provided and
// already exist: the server rejects the update with a 409 Conflict". A
// deleted resource may be created again.
//
// Only a resource the requester may see is weighed (authz.Policy.Current):
// one hidden from them answers as one that does not exist, and the update
// goes on to be refused as such (authz.Policy.MayChooseID).
func (s *Server) noUnmatchedOverwrite(tx *store.Tx, typ, id string) error {
	v, err := s.policy.Current(tx, AccessFrom(tx.Context()), typ, id)
	if err != nil || v == nil || v.Deleted {
		return nil
	}
	return errs.E("fhir.update", errs.Conflict, fmt.Sprintf(
		"the condition matched no resource, but %s/%s, named by the resource's id, exists and does not match it; a conditional update that matches nothing may only create (FHIR R4 http.html#cond-update)", typ, id))
}
