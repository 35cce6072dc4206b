package fhir

import (
	"context"
	"fmt"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// Access limits what one request may do. Middleware that authenticates a
// request (see Server.Use) puts one in the request context with
// WithAccess; a request without one is unrestricted, as in a server run
// open for local use.
type Access struct {
	// CanRead and CanWrite say whether resources of a type may be read or
	// written; nil allows every type.
	CanRead, CanWrite func(typ string) bool
	// Patient, when set, confines the request to the compartment of
	// Patient/<Patient>: reads of anything else answer 404, searches find
	// only the compartment, writes outside it are refused. When the server
	// follows MDM links (SetPatientLinks) the records of the Patients
	// linked to the member read as the member's own (InMemberRecord);
	// writes stay confined to the member's own compartment.
	Patient string
	// Subject names who is acting, for logs and Provenance.
	Subject string
}

type accessKey struct{}

// WithAccess returns ctx carrying a.
func WithAccess(ctx context.Context, a *Access) context.Context {
	return context.WithValue(ctx, accessKey{}, a)
}

// AccessFrom returns the Access of ctx, nil when unrestricted.
func AccessFrom(ctx context.Context) *Access {
	a, _ := ctx.Value(accessKey{}).(*Access)
	return a
}

func (a *Access) mayRead(typ string) error {
	if a != nil && a.CanRead != nil && !a.CanRead(typ) {
		return errs.E("fhir.access", errs.Permission, fmt.Sprintf("this token does not allow reading %s resources", typ))
	}
	return nil
}

func (a *Access) mayWrite(typ string) error {
	if a != nil && a.CanWrite != nil && !a.CanWrite(typ) {
		return errs.E("fhir.access", errs.Permission, fmt.Sprintf("this token does not allow writing %s resources", typ))
	}
	return nil
}

func (a *Access) compartment() string {
	if a == nil {
		return ""
	}
	return a.Patient
}

// readCompartment is the compartment a read or search of typ is confined
// to under a: the member's, for the types of the Patient compartment; none
// for the types that belong to no patient (Practitioner, Organization,
// Location, Medication...), which a member may read like anyone whose
// scopes allow it.
func (s *Server) readCompartment(a *Access, typ string) string {
	if !s.reg.InPatientCompartment(typ) {
		return ""
	}
	return a.compartment()
}

// visible checks that a stored resource may be seen under a: outside the
// member's record (InMemberRecord) it does not exist, as far as the
// request can tell.
func (s *Server) visible(tx *store.Tx, a *Access, typ, id string) error {
	if err := a.mayRead(typ); err != nil {
		return err
	}
	if p := s.readCompartment(a, typ); p != "" && !s.InMemberRecord(tx, p, typ, id) {
		return errs.E("fhir.access", errs.NotFound, fmt.Sprintf("%s/%s is not known", typ, id))
	}
	return nil
}

// writable checks that doc may be written under a: the type is allowed and,
// for a member-scoped request, the resource (as written, and as it was)
// belongs to the member's compartment.
func (s *Server) writable(tx *store.Tx, a *Access, doc *store.Doc, prev *store.Version) error {
	if err := a.mayWrite(doc.Type); err != nil {
		return err
	}
	if err := a.mayWriteLinks(doc, prev); err != nil {
		return err
	}
	p := a.compartment()
	if p == "" {
		return nil
	}
	if prev != nil && !tx.InCompartment(prev.Type, prev.ID, p) {
		return errs.E("fhir.access", errs.Permission, fmt.Sprintf("%s/%s is outside the compartment of Patient/%s", prev.Type, prev.ID, p))
	}
	if doc.Entries == nil {
		s.store.Prepare(doc)
	}
	if !s.reg.InCompartment(doc.Type, doc.ID, doc.Entries, p) {
		return errs.E("fhir.access", errs.Permission, fmt.Sprintf("the %s does not belong to Patient/%s, the only patient this token may write for", doc.Type, p))
	}
	return nil
}
