package notify

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// The outbox lives in two buckets of the store's database: entries by
// sequence, and the pending ones again by when they are due, so the
// worker finds what to send without reading the failed ones it keeps.
const (
	bucketOutbox = "notify_outbox" // seq (8 bytes) -> Notification JSON
	bucketDue    = "notify_due"    // due (8 bytes, unix ns) + seq -> nothing
)

// Headers every delivery carries.
const (
	// HeaderNotificationID carries the notification's stable id: the same
	// on every attempt, so a receiver can drop duplicates.
	HeaderNotificationID = "X-Notification-Id"
	// HeaderSubscription names the Subscription ("Subscription/<id>") on
	// rest-hook requests.
	HeaderSubscription = "X-Subscription"
)

// Notification statuses in the outbox. Delivered notifications are
// removed.
const (
	StatePending = "pending"
	StateFailed  = "failed"
	// StateQueued counts, in GET /api/notifications, the notifications
	// still to be made from writes that matched many Subscriptions.
	StateQueued = "queued"
)

// Notification is one outbox entry: one delivery of one resource version
// to one endpoint (one email address, for email channels). It is also what
// GET /api/notifications returns.
type Notification struct {
	// ID is the stable id sent with every attempt.
	ID  string `json:"id"`
	Seq uint64 `json:"seq"`
	// Status is pending or failed.
	Status       string `json:"status"`
	Subscription string `json:"subscription"`
	Channel      string `json:"channel"`
	// Endpoint is the URL (rest-hook) or the one address (email).
	Endpoint string `json:"endpoint"`
	// Audience is who an email is for (subscriber or resource).
	Audience Audience `json:"audience,omitempty"`
	// Resource ("Type/id") and Version are the version that matched.
	Resource string `json:"resource"`
	Version  int64  `json:"version"`
	// Event is create or update.
	Event    string    `json:"event"`
	Created  time.Time `json:"created"`
	Attempts int       `json:"attempts"`
	// NextAttempt is when a pending notification is tried next.
	NextAttempt time.Time `json:"nextAttempt,omitzero"`
	LastAttempt time.Time `json:"lastAttempt,omitzero"`
	// LastError says why the last attempt failed.
	LastError string    `json:"lastError,omitempty"`
	FailedAt  time.Time `json:"failedAt,omitzero"`
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

func dueKey(at time.Time, seq uint64) []byte {
	k := binary.BigEndian.AppendUint64(nil, uint64(at.UnixNano()))
	return binary.BigEndian.AppendUint64(k, seq)
}

func parseDueKey(k []byte) (time.Time, uint64, bool) {
	if len(k) != 16 {
		return time.Time{}, 0, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(k[:8]))), binary.BigEndian.Uint64(k[8:]), true
}

// getEntry reads entry seq; nil when there is none.
func getEntry(tx *store.Tx, seq uint64) (*Notification, error) {
	raw := tx.KV(bucketOutbox).Get(seqKey(seq))
	if raw == nil {
		return nil, nil
	}
	var n Notification
	if err := json.Unmarshal(raw, &n); err != nil {
		return nil, fmt.Errorf("notify: outbox entry %d: %w", seq, err)
	}
	return &n, nil
}

// addEntry stores a new entry: pending and due now, or, when held says
// why it cannot be sent now, failed (until its Subscription is
// re-activated).
func addEntry(tx *store.Tx, n *Notification, held string) error {
	seq, err := tx.KV(bucketOutbox).NextSequence()
	if err != nil {
		return err
	}
	n.Seq = seq
	if held != "" {
		n.Status, n.FailedAt, n.LastError = StateFailed, n.Created, held
	} else {
		n.Status, n.NextAttempt = StatePending, n.Created
	}
	if err := countRow(tx, 1); err != nil {
		return err
	}
	return putEntry(tx, n, time.Time{})
}

// putEntry writes n, moving its due-index key from oldDue (zero when it
// had none) to n.NextAttempt when pending.
func putEntry(tx *store.Tx, n *Notification, oldDue time.Time) error {
	raw, err := json.Marshal(n)
	if err != nil {
		return err
	}
	if err := tx.KV(bucketOutbox).Put(seqKey(n.Seq), raw); err != nil {
		return err
	}
	due := tx.KV(bucketDue)
	if !oldDue.IsZero() {
		if err := due.Delete(dueKey(oldDue, n.Seq)); err != nil {
			return err
		}
	}
	if n.Status == StatePending {
		return due.Put(dueKey(n.NextAttempt, n.Seq), []byte{})
	}
	return nil
}

// deleteEntry removes n and its due-index key.
func deleteEntry(tx *store.Tx, n *Notification) error {
	if n.Status == StatePending {
		if err := tx.KV(bucketDue).Delete(dueKey(n.NextAttempt, n.Seq)); err != nil {
			return err
		}
	}
	if err := countRow(tx, -1); err != nil {
		return err
	}
	return tx.KV(bucketOutbox).Delete(seqKey(n.Seq))
}

// scanEntries calls fn for every entry in sequence order until it returns
// false.
func scanEntries(tx *store.Tx, fn func(*Notification) (bool, error)) error {
	return tx.KV(bucketOutbox).Scan(nil, func(k, v []byte) (bool, error) {
		var n Notification
		if err := json.Unmarshal(v, &n); err != nil {
			return false, fmt.Errorf("notify: outbox entry %x: %w", k, err)
		}
		return fn(&n)
	})
}
