// Package authz is p2pserver's access policy: the one place that decides
// what a principal (a member, a client, the back office, an admin) may do
// with the FHIR data. Every path that reads, writes, matches, includes,
// pages or serves a resource asks it; none keeps rules of its own.
//
// # Principals
//
//   - No principal (nil): the server's own work (batch ingestion,
//     notifications, start-up seeding), an admin token, or a server run
//     open without -trusted-issuers. Everything is allowed.
//   - A member: a token with a patient (the SMART patient claim, or a
//     fhirUser naming a Patient). Its scopes say which types and
//     interactions; its compartment (see below) says which resources.
//   - A client: a token without a patient (user/ or system/ scopes, SMART
//     Backend Services). Its scopes say which types and interactions; it
//     is not confined to a compartment.
//   - The back office has /api roles only and no access to /fhir.
//
// # Scopes per interaction
//
// The SMART App Launch 2 permission letters decide each interaction
// (http://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html,
// "Scopes for requesting clinical data"): c create; r read, vread and
// instance history; u update (also update-as-create); d delete; s type
// search, type and system history. v1 read is rs, write cud, * cruds.
// Batch and transaction entries are each authorized as the same call over
// REST ("Batches and Transactions"). A conditional interaction
// (If-None-Exist, conditional update or delete, a conditional reference
// in a transaction) runs a search, so it needs s on the searched type as
// well as its own letter. What a search, _include, _revinclude or a page
// returns must be readable: r or s on its type (see Principal.CanRead).
//
// # A member's compartment
//
// A member's record is the compartment of their Patient, plus the
// compartments of the Patients linked to them (Policy.LinkPatients). For
// every resource type the member may see a version when:
//
//   - the type is in the R4 Patient compartment: the version belongs to
//     the compartment (one of its compartment parameters names one of the
//     member's Patients); a Provenance also when every resource it
//     targets is one the member may see;
//   - Binary: the resource its securityContext names is one the member may
//     see;
//   - Bundle: a document whose first entry's Composition.subject, or a
//     message whose first entry's MessageHeader.focus, is the member (or a
//     resource the member may see); Bundles of other types are not shown;
//   - Device: its patient is the member; a Device assigned to no patient
//     is reference data, like a Practitioner;
//   - Subscription: its criteria are confined to the member (a
//     compartment parameter of the criteria's type, or _id for Patient,
//     naming only the member's Patients);
//   - the types listed as reference data (Public: Practitioner,
//     Organization, Location, Medication, the conformance and knowledge
//     types...): always, as they hold no patient's data;
//   - the other types that can hold a patient's data (References:
//     MessageHeader, Linkage, Slot, Contract, VerificationResult...):
//     when they refer to at least one patient-bound resource and every
//     patient-bound resource they refer to is one the member may see;
//   - a type with no rule (Denied) is never shown.
//
// A deleted resource keeps its owner: the last version before the
// deletion decides. History and vread check each version on its own.
//
// # Writes by a member
//
// The resource as it was (its last live version) and as it will be must
// both lie wholly in the member's own compartment (the records of the
// Patients linked to them are read as theirs, never written): it belongs
// to the compartment by its type's rule, every reference it holds to a
// Patient names the member, and every reference to another patient-bound
// resource names one of the member's own. So a Group of several members or a Composition
// about two people is not writable by a member, and a Provenance cannot
// target another member's data. A resource whose rule reads it through
// what it refers to (Provenance, Binary, Bundle, Device, References) may
// refer only to resources in no other Patient's record: a Provenance
// targeting the Group a member shares would be the other member's too. A member cannot create a resource with
// an id of its choosing (update-as-create): an update of an id the member
// may not see answers as an update of an id that does not exist. Nor can
// a client for the types another client's resources may be hidden in
// (OwnedTypes): see Policy.MayChooseID.
//
// Whatever the principal, only an unrestricted request (the server's MDM,
// an admin) may add, change or remove Patient.link, or delete a Patient
// that has links: the links decide whose record a Patient's data is.
//
// # Not found means not found
//
// For every interaction, a resource (or version) that exists but is not
// the requester's answers exactly as one that does not exist: Current and
// the version checks give the same errors and messages as the store does
// for an unknown id.
//
// # Paths that ask the policy
//
// A new path is not done until it is on this list and in the tests
// (cmd/p2pserver access_test.go and noninterference_test.go):
//
//   - smart.Guard turns every token (a trusted issuer's, or one of this
//     server's own backend-client tokens) into the Principal; admin tokens
//     and an open server give none;
//   - fhir read, vread: Policy.Need (r), Policy.Current, Policy.CanSee per
//     version;
//   - fhir instance history (r), type history (s), system history (s on
//     every type): each version through CanSee; type and system history
//     are refused to members;
//   - fhir search, GET and POST _search (s): Policy.Confine (compartment,
//     chain targets, :mdm expansion) and Policy.Filter; _include and
//     _revinclude, :iterate included, through CanSee (fhir/include.go);
//   - fhir search pages and $everything pages: every resource through
//     CanSee again when the page is served, and the cursor only with the
//     Principal.Key it was made with;
//   - fhir create (c), update (u), delete (d), and their conditional forms
//     (s): Need, Current, Policy.MayWrite; If-None-Exist through Confine
//     and Filter;
//   - fhir transaction and batch: each entry as the same REST call; a
//     transaction's ifNoneExist (c, s), conditional updates and deletes
//     (s, and d for a delete that matches nothing) and conditional
//     references (s) through Confine and Filter, references between its
//     entries through MayWrite when each is written;
//   - fhir Patient/$everything: Current for the Patient, CanSee for every
//     match and include (and nothing the request may not see brings its
//     references in), on the first page and on every later one;
//   - fhir.Server.InMemberRecord and MemberPatients (the MDM record rule)
//     answer through CanSee and Patients;
//   - provenance.Source: the stored Provenance and the payer's
//     Organization added to pages through CanSee;
//   - notify: a Subscription's notification goes out only for a version
//     its owner may see when it matches and when it is delivered (CanSee
//     with the owner's rights); chained criteria are matched through
//     Confine with the owner, so a chain reaches only what the owner may
//     read;
//   - facades/eligibility operations: Need and Current for the resources
//     they act on;
//   - bulk $export (system, Patient, Group) and $davinci-data-export:
//     members refused; the job acts for the kick-off's client with the
//     types it could read then (bulk Job.principal): every resource
//     written through Seer, _typeFilter chains through Confine;
//   - mdm $member-match: clients only (a member is refused), with read on
//     Patient and Coverage;
//   - the Healthie facade: the Principal's letters per type, members
//     refused.
package authz

import (
	"context"
	"strings"
)

// Perm is a set of SMART permissions on a resource type, in the terms of
// SMART App Launch 2: c, r, u, d, s.
type Perm uint8

// The permissions, in the order a v2 scope spells them.
const (
	Create Perm = 1 << iota
	Read
	Update
	Delete
	Search
)

// PermAll is every permission ("cruds", v1 "*").
const PermAll = Create | Read | Update | Delete | Search

// Letters is the v2 spelling of the permissions, in order.
const Letters = "cruds"

// String spells p as a v2 scope suffix, e.g. "rs".
func (p Perm) String() string {
	var b strings.Builder
	for i := range len(Letters) {
		if p&(1<<i) != 0 {
			b.WriteByte(Letters[i])
		}
	}
	return b.String()
}

// Verb names the interaction a single permission stands for.
func (p Perm) Verb() string {
	switch p {
	case Create:
		return "create"
	case Read:
		return "read"
	case Update:
		return "update"
	case Delete:
		return "delete"
	case Search:
		return "search"
	}
	return "interaction"
}

// Principal is who makes a request, as the policy sees it. A nil
// *Principal is unrestricted (see the package comment); its methods accept
// nil.
type Principal struct {
	// Patient is the member's Patient id; empty for a client.
	Patient string
	// Subject names who acts, for logs and Provenance.
	Subject string
	// Level is the scope level refusals suggest ("patient", "user" or
	// "system"); empty reads as "patient" for a member, "system" otherwise.
	Level string
	// Grant reports whether the principal's scopes grant all of need on
	// resources of typ; nil grants everything.
	Grant func(typ string, need Perm) bool
	// Client names the client the principal acts for (see OwnerTagSystem):
	// resources of the OwnedTypes tagged with another owner are not its to
	// see. Empty: a principal that owns nothing.
	Client string
	// Binding identifies the principal's rights (issuer, subject, client,
	// patient and scopes): a search or $everything cursor made under one
	// Binding is refused under another. Empty: derived from Patient.
	Binding string
}

// Member reports whether p is confined to a member's compartment.
func (p *Principal) Member() bool { return p != nil && p.Patient != "" }

// Allows reports whether p's scopes grant all of need on typ.
func (p *Principal) Allows(typ string, need Perm) bool {
	return p == nil || p.Grant == nil || p.Grant(typ, need)
}

// CanRead reports whether p may see resources of typ at all: r or s, as
// what a search returns is as much read as a read is.
func (p *Principal) CanRead(typ string) bool {
	return p.Allows(typ, Read) || p.Allows(typ, Search)
}

// CanWrite reports whether p may change resources of typ in some way: c,
// u or d.
func (p *Principal) CanWrite(typ string) bool {
	return p.Allows(typ, Create) || p.Allows(typ, Update) || p.Allows(typ, Delete)
}

// Key is what a cursor is bound to: Binding, or the patient when there is
// none; "" for an unrestricted request.
func (p *Principal) Key() string {
	switch {
	case p == nil:
		return ""
	case p.Binding != "":
		return p.Binding
	}
	return "patient:" + p.Patient
}

func (p *Principal) level() string {
	switch {
	case p.Level != "":
		return p.Level
	case p.Member():
		return "patient"
	}
	return "system"
}

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// FromContext returns the Principal of ctx, nil when unrestricted.
func FromContext(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}
