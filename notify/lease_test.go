package notify_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/lease"
	"github.com/p2pserver/p2pserver/internal/secrets"
	"github.com/p2pserver/p2pserver/notify"
)

// TestDeliveriesTakenOverWhenTheirProcessDies runs two delivery workers
// (two processes) on one outbox. While the first has the deliveries in
// flight (the receiver has not answered), the second does not make them
// again; the first dies with them unanswered (no release), and the second
// delivers each of them once its lease has expired: every notification is
// answered 200 exactly once, under its one X-Notification-Id.
func TestDeliveriesTakenOverWhenTheirProcessDies(t *testing.T) {
	firstAlive, die := context.WithCancel(context.Background())
	defer die()
	var first *lease.Manager
	e := newEnv(t, withLeases(func(st *store.Store) *lease.Manager {
		first = lease.New(st, lease.Config{Owner: "first", Duration: 3 * time.Second, Scan: 20 * time.Millisecond, Logger: quiet})
		first.Start(firstAlive)
		return first
	}))

	// The receiver holds every request while hang is set (it never
	// answers it: the attempt does not count), and counts the requests it
	// answered, by notification id.
	var mu sync.Mutex
	hang := true
	arrived := map[string]int{} // requests by id, answered or not
	answered := map[string]int{}
	recv := newHook(t)
	recv.setRespond(func(w http.ResponseWriter, r *http.Request, _ int) {
		id := r.Header.Get(notify.HeaderNotificationID)
		mu.Lock()
		arrived[id]++
		h := hang
		mu.Unlock()
		if h {
			<-r.Context().Done()
			return
		}
		mu.Lock()
		answered[id]++
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	})
	// Three Subscriptions (three recipients, whose deliveries do not
	// wait for each other's) and one write: three deliveries in flight.
	const writes = 3
	for i := range writes {
		e.do("POST", "/Subscription", restHook(fmt.Sprintf("%s/s%d", recv.srv.URL, i), "Basic", "application/fhir+json")).want(t, 201)
	}
	e.do("POST", "/Basic", map[string]any{"resourceType": "Basic", "code": map[string]any{"text": "w"}}).want(t, 201)
	waitFor(t, "every delivery in flight at the receiver", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(arrived) == writes
	})

	// The second process: its own worker and lease owner on the same
	// outbox (its writes would be matched by its own hook; here the test
	// writes through the first only).
	cipher, err := secrets.NewCipher(testKey)
	if err != nil {
		t.Fatal(err)
	}
	second := lease.New(e.st, lease.Config{Owner: "second", Duration: 3 * time.Second, Scan: 20 * time.Millisecond, Logger: quiet})
	secondCtx, stopSecond := context.WithCancel(context.Background())
	second.Start(secondCtx)
	cfg := notify.Config{Leases: second, Logger: quiet, MaxAttempts: 1000, Backoff: 20 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond, Timeout: 5 * time.Second, Cipher: cipher}
	notify.DeliverOnly(&cfg)
	fs2 := fhir.New(e.st, fhir.Config{BaseURL: e.base, MaxBody: 1 << 20})
	n2, err := notify.New(fs2, cfg)
	if err != nil {
		t.Fatal(err)
	}
	n2.Start(secondCtx)
	t.Cleanup(func() { n2.Close(); stopSecond() })

	// Both alive: whatever the second looks at, the deliveries stay with
	// the first (one request each at the receiver). The wait is for the
	// second's lease manager to have scanned; it is not what is asserted.
	for range 3 {
		time.Sleep(second.Scan())
	}
	mu.Lock()
	for id, n := range arrived {
		if n != 1 {
			t.Errorf("notification %s reached the receiver %d times while its first delivery was in flight", id, n)
		}
	}
	// The first process dies: its worker stops, its leases are neither
	// renewed nor released.
	hang = false
	mu.Unlock()
	die()
	e.n.Close()

	waitFor(t, "every notification answered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(answered) == writes
	})
	waitFor(t, "an empty outbox", func() bool { return len(e.outbox("")) == 0 })
	mu.Lock()
	defer mu.Unlock()
	for id, n := range answered {
		if n != 1 {
			t.Errorf("notification %s was answered %d times", id, n)
		}
	}
	for id := range arrived {
		if answered[id] != 1 {
			t.Errorf("notification %s, in flight when the first process died, was not delivered by the second", id)
		}
	}
}
