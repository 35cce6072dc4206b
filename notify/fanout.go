package notify

import (
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// A write that matches Subscriptions costs the writer one outbox row,
// however many Subscriptions it matches: an event naming the write and
// the set of Subscriptions it matched (a set many writes share, stored
// once). The delivery worker fans events out into one notification per
// Subscription and address, a few hundred at a time and only as fast as
// it delivers, in its own write transactions. Nothing is lost: the event
// commits with the write, and its fan-out with the worker's progress.
//
// Matching is cheap too: the active Subscriptions are kept in memory,
// indexed by the type of their criteria and by one criteria parameter
// that matches whole index keys (Task?code=x is found from the write's
// code entry), Subscriptions with the same criteria, owner and status
// being matched once as a group.
const (
	bucketEvents = "notify_events" // seq -> event JSON, a write not yet fanned out
	bucketSets   = "notify_sets"   // digest -> the Subscriptions a write matched (JSON list)
	bucketMeta   = "notify_meta"   // metaGen, metaRows
)

var (
	// metaGen changes at every write of a Subscription: the in-memory
	// index is rebuilt when the transaction at hand sees another value.
	metaGen = []byte("gen")
	// metaRows counts the outbox's rows: events and notifications.
	metaRows = []byte("rows")
)

// fanOutChunk is how many Subscriptions of an event one worker
// transaction fans out.
const fanOutChunk = 256

// event is a write that matched Subscriptions, not yet fanned out.
type event struct {
	Seq      uint64    `json:"seq"`
	Resource string    `json:"resource"` // Type/id
	Version  int64     `json:"version"`
	Event    string    `json:"event"` // create or update
	Created  time.Time `json:"created"`
	Set      string    `json:"set"`   // digest of the set in bucketSets
	Count    int       `json:"count"` // members of the set
	Next     int       `json:"next"`  // members fanned out so far
}

// setMember is one Subscription a write matched; Held when it was in
// error then (its notifications are kept, failed, until it is
// re-activated).
type setMember struct {
	ID   string `json:"id"`
	Held bool   `json:"held,omitempty"`
}

// subIndex is the active Subscriptions as of one generation.
type subIndex struct {
	gen   uint64
	byID  map[string]*subscription
	types map[string]*typeIndex
}

// typeIndex finds the Subscription groups whose criteria are on one type.
type typeIndex struct {
	count int                    // Subscriptions
	byKey map[string][]*subGroup // param NUL key of an exact clause -> groups
	scan  []*subGroup            // groups without such a clause: checked on every write
}

// subGroup is Subscriptions that match the same writes: the same
// criteria, owner, status and end.
type subGroup struct {
	query   *search.Query
	chained bool
	owner   *owner
	ownerID string
	end     time.Time
	members []setMember
	digest  [32]byte
	mark    uint64 // the match round that last considered it
}

// gens makes generation values that are never reused in a process, so
// that an index built in a transaction that was then taken back is never
// taken for current. It starts at a random point, so that the values of
// several processes on one database do not meet either (a process must
// not take another's new generation for the one it has indexed).
var gens atomic.Uint64

func init() {
	var b [8]byte
	_, _ = crand.Read(b[:])
	gens.Store(binary.BigEndian.Uint64(b[:]))
}

// bumpGen marks the Subscriptions as changed in tx.
func bumpGen(tx *store.Tx) error {
	return tx.KV(bucketMeta).Put(metaGen, binary.BigEndian.AppendUint64(nil, gens.Add(1)))
}

func readGen(tx *store.Tx) uint64 {
	if b := tx.KV(bucketMeta).Get(metaGen); len(b) == 8 {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// index returns the Subscription index as tx sees it, rebuilding what
// changed since the last one (only the Subscriptions whose version
// differs are read and parsed again). It is used in write transactions
// only: the hook, the Subscription validator, the fan-out.
func (n *Service) index(tx *store.Tx) (*subIndex, error) {
	n.cmu.Lock()
	defer n.cmu.Unlock()
	gen := readGen(tx)
	if n.idx != nil && n.idx.gen == gen {
		return n.idx, nil
	}
	prev := map[string]*subscription{}
	if n.idx != nil {
		prev = n.idx.byID
	}
	idx := &subIndex{gen: gen, byID: map[string]*subscription{}, types: map[string]*typeIndex{}}
	var failed error
	tx.CurrentVersions("Subscription", func(id string, version int64, deleted bool) bool {
		if deleted {
			return true
		}
		s := prev[id]
		if s == nil || s.version != version {
			var err error
			if s, err = n.loadOne(tx, id); err != nil {
				failed = err
				return false
			}
		}
		if s != nil {
			idx.byID[id] = s
		}
		return true
	})
	if failed != nil {
		return nil, failed
	}
	groups := map[string]*subGroup{}
	for _, s := range idx.byID {
		if s.status != StatusActive && s.status != StatusError {
			continue
		}
		ownerID := ""
		if s.owner != nil {
			b, _ := json.Marshal(s.owner)
			ownerID = string(b)
		}
		key := strings.Join([]string{s.criteria, ownerID, s.end.String()}, "\x00")
		g := groups[key]
		if g == nil {
			g = &subGroup{query: s.query, owner: s.owner, ownerID: ownerID, end: s.end}
			for _, c := range s.query.Clauses {
				for _, v := range c.Values {
					g.chained = g.chained || v.Chain != nil
				}
			}
			groups[key] = g
			ti := idx.types[s.query.Type]
			if ti == nil {
				ti = &typeIndex{byKey: map[string][]*subGroup{}}
				idx.types[s.query.Type] = ti
			}
			anchored := false
			for i := range s.query.Clauses {
				c := &s.query.Clauses[i]
				keys, ok := c.ExactKeys()
				if !ok {
					continue
				}
				for _, k := range slices.Compact(slices.Sorted(slices.Values(keys))) {
					ti.byKey[c.Param.Code+"\x00"+k] = append(ti.byKey[c.Param.Code+"\x00"+k], g)
				}
				anchored = true
				break
			}
			if !anchored {
				ti.scan = append(ti.scan, g)
			}
		}
		g.members = append(g.members, setMember{ID: s.id, Held: s.status == StatusError})
		idx.types[s.query.Type].count++
	}
	for _, g := range groups {
		slices.SortFunc(g.members, func(a, b setMember) int { return strings.Compare(a.ID, b.ID) })
		h := sha256.New()
		for _, m := range g.members {
			fmt.Fprintf(h, "%s\x00%t\x00", m.ID, m.Held)
		}
		copy(g.digest[:], h.Sum(nil))
	}
	n.idx = idx
	return idx, nil
}

// loadOne reads and parses one Subscription; nil when it is deleted or
// its criteria do not parse.
func (n *Service) loadOne(tx *store.Tx, id string) (*subscription, error) {
	v, err := tx.Read("Subscription", id)
	if err != nil {
		if errs.Is(err, errs.NotFound) || errs.Is(err, errs.Gone) {
			return nil, nil
		}
		return nil, err
	}
	r, err := decodeResource(v.Type, v.ID, v.VersionID, v.LastUpdated, v.JSON)
	if err != nil {
		return nil, err
	}
	s, issues := n.decode(v.ID, v.VersionID, r.Map)
	if s.query == nil {
		if st := statusOf(v.JSON); st == StatusActive || st == StatusError {
			n.log.Warn("notify: active Subscription ignored: its criteria do not parse", "subscription", v.ID, "issues", len(issues))
		}
		return nil, nil
	}
	if s.owner, err = storedOwner(tx, v.ID); err != nil {
		return nil, err
	}
	return s, nil
}

// activeOn counts the active (and error) Subscriptions on typ other than
// id.
func (idx *subIndex) activeOn(typ, id string) int {
	ti := idx.types[typ]
	if ti == nil {
		return 0
	}
	n := ti.count
	if s := idx.byID[id]; s != nil && s.query.Type == typ && (s.status == StatusActive || s.status == StatusError) {
		n--
	}
	return n
}

// rounds numbers match rounds, for subGroup.mark.
var rounds atomic.Uint64

// match returns the groups whose Subscriptions the write ev concerns,
// ordered by digest.
func (n *Service) match(tx *store.Tx, idx *subIndex, ev store.Event) ([]*subGroup, error) {
	v := ev.Version
	ti := idx.types[v.Type]
	if ti == nil {
		return nil, nil
	}
	round := rounds.Add(1)
	now := n.now()
	var out []*subGroup
	seen := map[string]bool{} // owners checked, by ownerID: may they read v
	try := func(g *subGroup) error {
		if g.mark == round {
			return nil
		}
		g.mark = round
		if !g.end.IsZero() && !now.Before(g.end) {
			return nil // ended
		}
		ok, err := n.matches(tx, g, ev)
		if err != nil || !ok {
			return err
		}
		if g.owner != nil {
			can, checked := seen[g.ownerID]
			if !checked {
				can = n.fs.Policy().CanSee(tx, g.owner.principal(), v)
				seen[g.ownerID] = can
			}
			if !can {
				// Its owner may not read this version: nothing is sent,
				// not even a ping. (Without a recorded owner the delivery
				// fails, saying why.)
				return nil
			}
		}
		out = append(out, g)
		return nil
	}
	for _, g := range ti.scan {
		if err := try(g); err != nil {
			return nil, err
		}
	}
	for _, e := range ev.Entries {
		for _, g := range ti.byKey[e.Param+"\x00"+e.Key] {
			if err := try(g); err != nil {
				return nil, err
			}
		}
	}
	slices.SortFunc(out, func(a, b *subGroup) int { return strings.Compare(string(a.digest[:]), string(b.digest[:])) })
	return out, nil
}

// matches reports whether the write ev satisfies g's criteria: from the
// write's index entries, without reading, unless a clause is chained. A
// chain is answered as its owner's search would be (authz.Policy.Confine):
// its targets are only resources the owner may read, so that whether a
// notification is sent never tells what another resource holds.
func (n *Service) matches(tx *store.Tx, g *subGroup, ev store.Event) (bool, error) {
	if g.chained || ev.Entries == nil {
		q := g.query
		if g.chained && g.owner != nil {
			confined := *g.query
			n.fs.Policy().Confine(tx, g.owner.principal(), &confined)
			q = &confined
		}
		ok, err := tx.Match(q, ev.Version.ID)
		if err != nil {
			return false, fmt.Errorf("notify: match %s: %w", g.query.Type, err)
		}
		return ok, nil
	}
	for i := range g.query.Clauses {
		if !search.Matches(&g.query.Clauses[i], ev.Entries) {
			return false, nil
		}
	}
	return true, nil
}

// inlineFanOut is the most notifications a write makes itself: a write
// that matches a few Subscriptions writes their notifications at once
// (they are listed at once), one that matches more writes one event.
const inlineFanOut = 8

// addEvent records that the write ev matched groups: their notifications
// when they are few, else the one outbox row of an event, with the set of
// their Subscriptions unless it is stored already.
func (n *Service) addEvent(tx *store.Tx, idx *subIndex, ev store.Event, groups []*subGroup) error {
	v := ev.Version
	e := &event{Resource: v.Type + "/" + v.ID, Version: v.VersionID, Event: string(ev.Op), Created: n.now()}
	h := sha256.New()
	for _, g := range groups {
		h.Write(g.digest[:])
		e.Count += len(g.members)
	}
	if e.Count <= inlineFanOut {
		if err := n.reserve(tx, e.Count); err != nil {
			return err
		}
		var members []setMember
		for _, g := range groups {
			members = append(members, g.members...)
		}
		tx.AfterCommit(n.poke)
		return n.fanOutMembers(tx, idx, e, members)
	}
	if err := n.reserve(tx, 1); err != nil {
		return err
	}
	e.Set = hex.EncodeToString(h.Sum(nil))
	sets := tx.KV(bucketSets)
	// The set is often large (2,000 Subscriptions take about 60 KB) and
	// shared by every write that matches the same ones: only whether it
	// is there is read.
	if !sets.Has([]byte(e.Set)) {
		var members []setMember
		for _, g := range groups {
			members = append(members, g.members...)
		}
		raw, err := json.Marshal(members)
		if err != nil {
			return err
		}
		if err := sets.Put([]byte(e.Set), raw); err != nil {
			return err
		}
	}
	events := tx.KV(bucketEvents)
	var err error
	if e.Seq, err = events.NextSequence(); err != nil {
		return err
	}
	raw, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := events.Put(seqKey(e.Seq), raw); err != nil {
		return err
	}
	tx.AfterCommit(n.poke)
	return countRow(tx, 1)
}

// reserve counts one more outbox row for a client's write, or refuses
// the write when the outbox is full (503 with Retry-After): the outbox
// grows only until deliveries catch up or an administrator looks at why
// they fail, never without bound.
func (n *Service) reserve(tx *store.Tx, k int) error {
	if rows := readRows(tx); rows+uint64(k) > uint64(n.cfg.MaxOutbox) {
		return errs.E("notify.outbox", errs.Transient, 30*time.Second, fmt.Sprintf(
			"the write matches Subscriptions, and the notification outbox is full (%d entries, -notify-max-outbox): deliveries are failing or slower than writes (GET /api/notifications lists them); the write was not made, try again later", rows))
	}
	return nil
}

// countRow adds delta to the outbox's row count.
func countRow(tx *store.Tx, delta int) error {
	rows := int64(readRows(tx)) + int64(delta)
	return tx.KV(bucketMeta).Put(metaRows, binary.BigEndian.AppendUint64(nil, uint64(max(rows, 0))))
}

func readRows(tx *store.Tx) uint64 {
	if b := tx.KV(bucketMeta).Get(metaRows); len(b) == 8 {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// countRows sets the outbox's row count from its content, once, for an
// outbox written before it was counted.
func (n *Service) countRows(tx *store.Tx) error {
	if tx.KV(bucketMeta).Get(metaRows) != nil {
		return nil
	}
	var rows uint64
	for _, b := range []string{bucketOutbox, bucketEvents} {
		if err := tx.KV(b).Scan(nil, func(_, _ []byte) (bool, error) { rows++; return true, nil }); err != nil {
			return err
		}
	}
	return tx.KV(bucketMeta).Put(metaRows, binary.BigEndian.AppendUint64(nil, rows))
}

// fanOut turns up to fanOutChunk Subscriptions of the oldest event into
// notifications, in one write transaction; it reports whether there was
// an event to work on.
func (n *Service) fanOut(tx *store.Tx) (bool, error) {
	var e *event
	err := tx.KV(bucketEvents).Scan(nil, func(_, v []byte) (bool, error) {
		e = &event{}
		return false, json.Unmarshal(v, e)
	})
	if err != nil || e == nil {
		return false, err
	}
	var members []setMember
	if raw := tx.KV(bucketSets).Get([]byte(e.Set)); raw != nil {
		if err := json.Unmarshal(raw, &members); err != nil {
			return false, fmt.Errorf("notify: the Subscription set of event %d: %w", e.Seq, err)
		}
	}
	idx, err := n.index(tx)
	if err != nil {
		return false, err
	}
	end := min(len(members), e.Next+fanOutChunk)
	if err := n.fanOutMembers(tx, idx, e, members[min(e.Next, end):end]); err != nil {
		return false, err
	}
	e.Next = end
	if e.Next >= len(members) {
		if err := tx.KV(bucketEvents).Delete(seqKey(e.Seq)); err != nil {
			return false, err
		}
		return true, countRow(tx, -1)
	}
	raw, err := json.Marshal(e)
	if err != nil {
		return false, err
	}
	return true, tx.KV(bucketEvents).Put(seqKey(e.Seq), raw)
}

// fanOutMembers makes the notifications of event e for members: one per
// rest-hook Subscription, one per address for email ones. Subscriptions
// deleted, turned off or ended since get none.
func (n *Service) fanOutMembers(tx *store.Tx, idx *subIndex, e *event, members []setMember) error {
	var email *emailSource
	for _, m := range members {
		s := idx.byID[m.ID]
		if s == nil || s.status == StatusOff || s.ended(n.now()) {
			continue
		}
		held := ""
		if m.Held && s.status == StatusError {
			held = fmt.Sprintf("not sent: Subscription/%s is in error; it is sent when the Subscription is re-activated (status requested)", s.id)
		}
		base := Notification{Subscription: s.id, Channel: s.channel, Resource: e.Resource,
			Version: e.Version, Event: e.Event, Created: e.Created}
		switch s.channel {
		case ChannelRestHook:
			nt := base
			nt.ID, nt.Endpoint = fhir.NewID(), s.endpoint
			if err := addEntry(tx, &nt, held); err != nil {
				return err
			}
		case ChannelEmail:
			if email == nil {
				var err error
				if email, err = n.emailSource(tx, e); err != nil {
					return err
				}
			}
			if err := n.emailNotifications(tx, email, s, base, held); err != nil {
				return err
			}
		}
	}
	return nil
}

// emailSource is the resource version an event is about, and the one
// before, decoded for templates.
type emailSource struct {
	cur, prev *Resource
}

func (n *Service) emailSource(tx *store.Tx, e *event) (*emailSource, error) {
	typ, id, _ := strings.Cut(e.Resource, "/")
	v, err := tx.VRead(typ, id, e.Version)
	if err != nil {
		return nil, err
	}
	src := &emailSource{}
	if src.cur, err = decodeResource(v.Type, v.ID, v.VersionID, v.LastUpdated, v.JSON); err != nil {
		return nil, err
	}
	if e.Version > 1 {
		if p, err := tx.VRead(typ, id, e.Version-1); err == nil {
			if src.prev, err = decodeResource(p.Type, p.ID, p.VersionID, p.LastUpdated, p.JSON); err != nil {
				return nil, err
			}
		}
	}
	return src, nil
}

// emailNotifications makes the notifications of one email Subscription:
// one per address, its own and (with ExtResourceRecipients) those the
// resource names, when its template finds the change notable.
func (n *Service) emailNotifications(tx *store.Tx, src *emailSource, s *subscription, base Notification, held string) error {
	t := n.templateFor(src.cur)
	if !t.Notable(src.prev, src.cur) {
		return nil
	}
	seen := map[string]bool{}
	send := func(addr string, aud Audience) error {
		key := strings.ToLower(addr)
		if seen[key] {
			return nil
		}
		seen[key] = true
		nt := base
		nt.ID = fhir.NewID()
		nt.Endpoint, nt.Audience = addr, aud
		return addEntry(tx, &nt, held)
	}
	for _, a := range s.to {
		if err := send(a, AudienceSubscriber); err != nil {
			return err
		}
	}
	if s.resourceTo {
		for _, a := range t.Recipients(src.cur) {
			if CheckAddress(a) != nil {
				// The resource's own rules decide what it may hold; an
				// address mail cannot go to is skipped.
				n.log.Warn("notify: the resource names an address that cannot be mailed", "resource", src.cur.Ref(), "subscription", s.id)
				continue
			}
			if err := send(a, AudienceResource); err != nil {
				return err
			}
		}
	}
	return nil
}

// queued counts the notifications owed by events not yet fanned out.
func queued(tx *store.Tx) (int, error) {
	total := 0
	err := tx.KV(bucketEvents).Scan(nil, func(_, v []byte) (bool, error) {
		var e event
		if err := json.Unmarshal(v, &e); err != nil {
			return false, err
		}
		total += e.Count - e.Next
		return true, nil
	})
	return total, err
}

// pruneSets removes the Subscription sets no event refers to any more.
func pruneSets(tx *store.Tx) error {
	used := map[string]bool{}
	if err := tx.KV(bucketEvents).Scan(nil, func(_, v []byte) (bool, error) {
		var e event
		if err := json.Unmarshal(v, &e); err != nil {
			return false, err
		}
		used[e.Set] = true
		return true, nil
	}); err != nil {
		return err
	}
	var unused [][]byte
	if err := tx.KV(bucketSets).Scan(nil, func(k, _ []byte) (bool, error) {
		if !used[string(k)] {
			unused = append(unused, k)
		}
		return len(unused) < 10000, nil
	}); err != nil {
		return err
	}
	for _, k := range unused {
		if err := tx.KV(bucketSets).Delete(k); err != nil {
			return err
		}
	}
	return nil
}
