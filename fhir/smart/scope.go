package smart

import (
	"fmt"
	"slices"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/spec"
)

// Perm is a set of SMART permissions on a resource type, in the terms of
// SMART App Launch 2 (c, r, u, d, s); the policy's (authz.Perm). A v1
// scope maps onto them: read is r and s, write is c, u and d, * is all
// five.
type Perm = authz.Perm

// The permissions of a SMART v2 scope, in the order the scope spells them.
const (
	Create  = authz.Create
	Read    = authz.Read
	Update  = authz.Update
	Delete  = authz.Delete
	Search  = authz.Search
	PermAll = authz.PermAll
)

// permLetters is the v2 spelling, in the order SMART requires.
const permLetters = authz.Letters

// The scope levels (SMART calls them contexts): a patient/ scope is about
// the patient in the token's launch context, user/ about what the user may
// see, system/ about a client acting for itself (Backend Services).
const (
	LevelPatient = "patient"
	LevelUser    = "user"
	LevelSystem  = "system"
)

// Scope is one SMART resource scope, such as patient/Observation.read (v1)
// or system/*.rs (v2).
type Scope struct {
	Raw   string
	Level string // LevelPatient, LevelUser or LevelSystem
	Type  string // a resource type, or "*"
	Perms Perm
	V2    bool // written in v2 syntax (cruds letters)
}

// Grants reports whether the scope grants all of need on resources of typ.
func (s Scope) Grants(typ string, need Perm) bool {
	return (s.Type == "*" || s.Type == typ) && s.Perms&need == need
}

// Scopes is a token's scope claim, parsed.
type Scopes struct {
	// Resource are the resource scopes this server honours.
	Resource []Scope
	// Other are the scopes that grant no resource access by themselves
	// (openid, fhirUser, launch/patient, offline_access...).
	Other []string
	// Ignored are resource-like scopes that grant nothing here, with the
	// reason, so that a refusal can say why.
	Ignored []Ignored
}

// Ignored is a scope ParseScopes could not honour.
type Ignored struct {
	Scope  string
	Reason string
}

// ParseScopes parses a space-separated scope claim. It never fails: a
// scope it cannot honour is listed in Ignored and grants nothing.
func ParseScopes(claim string) Scopes {
	return parseScopeList(strings.Fields(claim))
}

func parseScopeList(list []string) Scopes {
	var out Scopes
	for _, raw := range list {
		if !isResourceScope(raw) {
			out.Other = append(out.Other, raw)
			continue
		}
		sc, err := ParseScope(raw)
		if err != nil {
			out.Ignored = append(out.Ignored, Ignored{Scope: raw, Reason: err.Error()})
			continue
		}
		out.Resource = append(out.Resource, sc)
	}
	return out
}

// isResourceScope tells resource scopes (level/Type.perm) from the others:
// launch/patient, for one, has a level-like prefix but no dot.
func isResourceScope(raw string) bool {
	level, rest, ok := strings.Cut(raw, "/")
	if !ok || !strings.Contains(rest, ".") {
		return false
	}
	switch level {
	case LevelPatient, LevelUser, LevelSystem:
		return true
	}
	return false
}

// ParseScope parses one SMART resource scope in v1 syntax
// (level/Type.read|write|*) or v2 syntax (level/Type.cruds, letters in
// that order, at least one). A v2 scope with search constraints
// (?category=...) is refused: this server cannot confine results to a
// query, and granting the whole type instead would grant more than asked.
func ParseScope(raw string) (Scope, error) {
	level, rest, ok := strings.Cut(raw, "/")
	if !ok {
		return Scope{}, fmt.Errorf("not a resource scope (level/Type.permissions)")
	}
	switch level {
	case LevelPatient, LevelUser, LevelSystem:
	default:
		return Scope{}, fmt.Errorf("level %q is not patient, user or system", level)
	}
	if strings.Contains(rest, "?") {
		return Scope{}, fmt.Errorf("scopes with search constraints are not supported: the whole type is not granted either")
	}
	typ, perm, ok := strings.Cut(rest, ".")
	if !ok || typ == "" || perm == "" {
		return Scope{}, fmt.Errorf("not of the form %s/Type.permissions", level)
	}
	if typ != "*" && !spec.R4().IsResource(typ) {
		return Scope{}, fmt.Errorf("%q is not a FHIR R4 resource type", typ)
	}
	sc := Scope{Raw: raw, Level: level, Type: typ}
	switch perm {
	case "read":
		sc.Perms = Read | Search
	case "write":
		sc.Perms = Create | Update | Delete
	case "*":
		sc.Perms = PermAll
	default:
		p, err := parseV2(perm)
		if err != nil {
			return Scope{}, err
		}
		sc.Perms, sc.V2 = p, true
	}
	return sc, nil
}

// parseV2 reads "cruds"-style letters: each at most once, in order.
func parseV2(s string) (Perm, error) {
	var p Perm
	next := 0
	for _, c := range []byte(s) {
		i := strings.IndexByte(permLetters[next:], c)
		if i < 0 {
			return 0, fmt.Errorf("permissions %q are neither read, write, * nor v2 letters from %q in that order", s, permLetters)
		}
		next += i
		p |= 1 << next
		next++
	}
	return p, nil
}

// Allows reports whether some scope of a level in levels grants need on
// typ.
func (ss Scopes) Allows(levels []string, typ string, need Perm) bool {
	for _, s := range ss.Resource {
		if s.Grants(typ, need) && slices.Contains(levels, s.Level) {
			return true
		}
	}
	return false
}

// AllowsAny reports whether some scope of a level in levels grants any of
// want on typ.
func (ss Scopes) AllowsAny(levels []string, typ string, want Perm) bool {
	for _, s := range ss.Resource {
		if (s.Type == "*" || s.Type == typ) && s.Perms&want != 0 && slices.Contains(levels, s.Level) {
			return true
		}
	}
	return false
}
