package notify

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// The outbox lives in three buckets of the store's database: entries by
// sequence; the pending ones again by recipient, in sequence order; and
// each recipient's first pending one by when it is due, so the worker
// finds what to send without reading the failed ones it keeps.
//
// Deliveries to one recipient (a Subscription's endpoint, or one email
// address of it) are made one at a time in the outbox's order: a member
// is not told "completed" before "received", even when the first attempt
// at "received" failed and waits to be tried again. Only a recipient's
// first pending notification is in the due index; when it leaves
// (delivered, dropped or failed for good) the next one takes its place.
// Recipients do not wait for each other.
const (
	bucketOutbox = "notify_outbox" // seq (8 bytes) -> Notification JSON
	bucketOrder  = "notify_order"  // recipient (16 bytes) + seq -> nothing, pending entries
	bucketDue    = "notify_due"    // due (8 bytes, unix ns) + seq -> nothing, each recipient's first pending entry
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

// recipientKey names n's recipient, its Subscription and endpoint,
// in a fixed length (a rest-hook URL may be long).
func recipientKey(n *Notification) []byte {
	h := sha256.Sum256([]byte(n.Subscription + "\x00" + n.Channel + "\x00" + n.Endpoint))
	return h[:16]
}

func orderKey(n *Notification) []byte { return append(recipientKey(n), seqKey(n.Seq)...) }

// firstPending returns the sequence of the first pending entry to the
// recipient rk, 0 when there is none.
func firstPending(tx *store.Tx, rk []byte) (uint64, error) {
	var first uint64
	err := tx.KV(bucketOrder).Scan(rk, func(k, _ []byte) (bool, error) {
		if len(k) == len(rk)+8 && bytes.HasPrefix(k, rk) {
			first = binary.BigEndian.Uint64(k[len(rk):])
		}
		return false, nil
	})
	return first, err
}

// putEntry writes n, moving its due-index key from oldDue (zero when it
// had none) to n.NextAttempt when it is pending and the first pending to
// its recipient; a notification that stops being pending hands the
// recipient's turn to the next one.
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
	if n.Status != StatePending {
		return leaveOrder(tx, n)
	}
	if err := tx.KV(bucketOrder).Put(orderKey(n), []byte{}); err != nil {
		return err
	}
	rk := recipientKey(n)
	first, err := firstPending(tx, rk)
	if err != nil || first != n.Seq {
		return err // it waits for the earlier ones to its recipient
	}
	// Put back before later ones (a re-queued failure), n goes first:
	// the one that was first waits again.
	var next uint64
	if err := tx.KV(bucketOrder).Scan(append(rk, seqKey(n.Seq+1)...), func(k, _ []byte) (bool, error) {
		if len(k) == len(rk)+8 && bytes.HasPrefix(k, rk) {
			next = binary.BigEndian.Uint64(k[len(rk):])
		}
		return false, nil
	}); err != nil {
		return err
	}
	if next != 0 {
		if e, err := getEntry(tx, next); err != nil {
			return err
		} else if e != nil {
			if err := due.Delete(dueKey(e.NextAttempt, e.Seq)); err != nil {
				return err
			}
		}
	}
	return due.Put(dueKey(n.NextAttempt, n.Seq), []byte{})
}

// leaveOrder takes n, no longer pending, out of its recipient's order,
// and makes the recipient's first pending notification due.
func leaveOrder(tx *store.Tx, n *Notification) error {
	if err := tx.KV(bucketOrder).Delete(orderKey(n)); err != nil {
		return err
	}
	first, err := firstPending(tx, recipientKey(n))
	if err != nil || first == 0 {
		return err
	}
	e, err := getEntry(tx, first)
	if err != nil || e == nil || e.Status != StatePending {
		return err
	}
	return tx.KV(bucketDue).Put(dueKey(e.NextAttempt, e.Seq), []byte{})
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
	if err := tx.KV(bucketOutbox).Delete(seqKey(n.Seq)); err != nil {
		return err
	}
	return leaveOrder(tx, n)
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
