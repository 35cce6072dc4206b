package notify_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store"
)

// BenchmarkTaskWrite measures what Subscriptions add to a write: the
// same Task create with no Subscription on Task, with 20 that do not match
// it, with one rest-hook that does (one outbox entry per write), and with
// 300 that do (one event row per write, the set of 300 stored once).
func BenchmarkTaskWrite(b *testing.B) {
	for _, c := range []struct {
		name           string
		other, matches int
	}{{"none", 0, 0}, {"20-not-matching", 20, 0}, {"1-matching", 0, 1}, {"300-matching", 0, 300}} {
		b.Run(c.name, func(b *testing.B) {
			e := newEnv(b, withoutMail())
			h := newHook(b)
			for i := 0; i < c.other; i++ {
				e.do("POST", "/Subscription", restHook(h.srv.URL, fmt.Sprintf("Task?identifier=urn:x|%d", i), "")).want(b, 201)
			}
			for i := 0; i < c.matches; i++ {
				e.do("POST", "/Subscription", restHook(h.srv.URL, "Task?status=requested", "")).want(b, 201)
			}
			e.n.Close() // measure the write, not the deliveries
			body, _ := json.Marshal(map[string]any{"resourceType": "Task", "status": "requested", "intent": "order"})
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				doc, err := e.fs.ParseResource(body, "Task")
				if err != nil {
					b.Fatal(err)
				}
				doc.ID = fhir.NewID()
				if err := e.st.Write(ctx, func(tx *store.Tx) error {
					_, err := e.fs.Put(tx, doc, 0)
					return err
				}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
