package authz

import (
	"bytes"
	"encoding/json"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// OwnerTagSystem is the meta.tag system of a resource that belongs to one
// client, its code naming the client (Principal.Client): such a resource
// (of the OwnedTypes) is read, found and changed only by that client, or
// by an unrestricted request. The PDex member-match Groups are: "The
// search function and the bundle contents returned SHALL be restricted to
// the {ids} that are associated with the Requesting/New Payer" (PDex STU
// 2.1, Payer-to-Payer Exchange (bulk), §pdex-161).
const OwnerTagSystem = "urn:p2pserver:owner"

// OwnedTypes are the types whose resources may carry an owner tag.
var OwnedTypes = map[string]bool{"Group": true}

// foreign reports whether v belongs to a client other than p's.
func foreign(p *Principal, v *store.Version) bool {
	if p == nil || v == nil || !OwnedTypes[v.Type] || !bytes.Contains(v.JSON, []byte(OwnerTagSystem)) {
		return false
	}
	owner, ok := OwnerOf(v.JSON)
	return ok && owner != p.Client
}

// OwnerOf returns the owner a resource's tag names, if any.
func OwnerOf(raw []byte) (string, bool) {
	var r struct {
		Meta struct {
			Tag []struct {
				System string `json:"system"`
				Code   string `json:"code"`
			} `json:"tag"`
		} `json:"meta"`
	}
	if json.Unmarshal(raw, &r) != nil {
		return "", false
	}
	for _, t := range r.Meta.Tag {
		if t.System == OwnerTagSystem {
			return t.Code, true
		}
	}
	return "", false
}
