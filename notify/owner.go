package notify

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/store"
)

// bucketOwners keeps whom each Subscription acts for: Subscription id ->
// owner JSON.
const bucketOwners = "notify_owners"

// owner is whom a Subscription acts for: the principal that last set what
// it sends where (its criteria and channel), with the rights its token had
// then. A Subscription sends only what its owner may read when the
// notification is delivered (authz.Policy.CanSee on the version sent): a
// member, only their own record; a client, the types its scopes let it
// read. Someone else changing only its status (off, requested) does not
// change its owner.
type owner struct {
	// Unrestricted: written without a restricted principal (an admin
	// token, the server's own seeding, a server run open).
	Unrestricted bool `json:"unrestricted,omitempty"`
	// Patient is the member the token was bound to; empty for a client.
	Patient string `json:"patient,omitempty"`
	// Subject is who wrote it, for logs.
	Subject string `json:"subject,omitempty"`
	// Grants are the permission letters (cruds) the token's scopes granted
	// on each resource type; "*" stands for every type not listed.
	Grants map[string]string `json:"grants,omitempty"`
	// Sends is a digest of what the Subscription sends where when the owner
	// set it: criteria, channel type, endpoint, payload, headers.
	Sends string `json:"sends"`
}

// ownerOf records p's rights over every resource type.
func ownerOf(p *authz.Principal, types []string, sends string) *owner {
	if p == nil {
		return &owner{Unrestricted: true, Sends: sends}
	}
	o := &owner{Patient: p.Patient, Subject: p.Subject, Grants: map[string]string{}, Sends: sends}
	count := map[string]int{}
	for _, typ := range types {
		var g authz.Perm
		for _, one := range []authz.Perm{authz.Create, authz.Read, authz.Update, authz.Delete, authz.Search} {
			if p.Allows(typ, one) {
				g |= one
			}
		}
		o.Grants[typ] = g.String()
		count[g.String()]++
	}
	// The letters most types share stand for all of them.
	common, most := "", 0
	for g, n := range count {
		if n > most || (n == most && g < common) {
			common, most = g, n
		}
	}
	for typ, g := range o.Grants {
		if g == common {
			delete(o.Grants, typ)
		}
	}
	o.Grants["*"] = common
	return o
}

// principal is the owner as the access policy sees it; nil when
// unrestricted.
func (o *owner) principal() *authz.Principal {
	if o.Unrestricted {
		return nil
	}
	return &authz.Principal{
		Patient: o.Patient,
		Subject: o.Subject,
		Grant: func(typ string, need authz.Perm) bool {
			g, ok := o.Grants[typ]
			if !ok {
				g = o.Grants["*"]
			}
			var have authz.Perm
			for i := range len(authz.Letters) {
				if strings.IndexByte(g, authz.Letters[i]) >= 0 {
					have |= 1 << i
				}
			}
			return have&need == need
		},
	}
}

// sendsDigest is the digest of what a Subscription sends where.
func sendsDigest(s *subscription, headers []header) string {
	h := sha256.New()
	for _, part := range []string{s.criteria, s.channel, s.endpoint, s.payload, fmt.Sprint(s.resourceTo)} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	for _, hd := range headers {
		h.Write([]byte(hd.name + ":" + hd.value))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// storedOwner reads the owner of Subscription id; nil when none is
// recorded (a Subscription stored before owners were).
func storedOwner(tx *store.Tx, id string) (*owner, error) {
	raw := tx.KV(bucketOwners).Get([]byte(id))
	if raw == nil {
		return nil, nil
	}
	var o owner
	if err := json.Unmarshal(raw, &o); err != nil {
		return nil, fmt.Errorf("notify: the owner of Subscription/%s: %w", id, err)
	}
	return &o, nil
}

func putOwner(tx *store.Tx, id string, o *owner) error {
	if o == nil {
		return tx.KV(bucketOwners).Delete([]byte(id))
	}
	raw, err := json.Marshal(o)
	if err != nil {
		return err
	}
	return tx.KV(bucketOwners).Put([]byte(id), raw)
}

// errNoOwner is why a Subscription stored before owners were recorded
// sends nothing.
func errNoOwner(id string) error {
	return fmt.Errorf("this Subscription (%s) was stored before this server recorded whose rights a Subscription acts under; write it again (status requested) to re-activate it under the writer's rights", id)
}
