package bulk

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/lease"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// TestExportTakenOverWhenItsProcessDies runs two Exporters (two
// processes) on one database and one export folder. While the first works
// an export, the second leaves it alone; the first dies mid-export (no
// release), and the second takes the job over once its lease has expired
// and finishes it from the checkpoint: every resource exported once.
func TestExportTakenOverWhenItsProcessDies(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	idp.AddClient("payer-x", "s")
	alive, die := context.WithCancel(context.Background())
	defer die()
	reached := make(chan struct{})
	var once sync.Once
	cfg := Config{Slice: 10, FileResources: 25, Workers: 1}
	cfg.afterSlice = func(ctx context.Context, j *Job) {
		if j.Written >= 30 {
			once.Do(func() { close(reached) })
			<-ctx.Done() // hold the worker until the process dies
		}
	}
	var first *lease.Manager
	p := newPayerWith(t, idp, cfg, func(st *store.Store) *lease.Manager {
		first = lease.New(st, lease.Config{Owner: "first", Duration: 3 * time.Second, Scan: 20 * time.Millisecond, Logger: testLogger(t)})
		first.Start(alive)
		return first
	})
	var obs []map[string]any
	for i := range 120 {
		obs = append(obs, map[string]any{"resourceType": "Observation", "id": fmt.Sprintf("o%03d", i), "status": "final",
			"code": map[string]any{"text": "x"}})
	}
	p.put(obs...)
	tok := p.token("payer-x", "system/*.rs")
	status := p.kickoff("GET", "/$export?_type=Observation", tok, nil)
	id := status[strings.LastIndex(status, "/")+1:]
	<-reached

	// The second process, on the same database and folder.
	secondCtx, stopSecond := context.WithCancel(context.Background())
	second := lease.New(p.st, lease.Config{Owner: "second", Duration: 3 * time.Second, Scan: 20 * time.Millisecond, Logger: testLogger(t)})
	second.Start(secondCtx)
	ex2, err := New(fhir.New(p.st, fhir.Config{BaseURL: p.URL, Logger: testLogger(t)}), nil,
		Config{Dir: filepath.Join(p.dir, "exports"), Slice: 10, FileResources: 25, Workers: 1, Leases: second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := ex2.Start(secondCtx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ex2.Close(); stopSecond() })
	// Both alive: the second finds the job held and does not queue it.
	ex2.scan(secondCtx)
	ex2.mu.Lock()
	queued := len(ex2.queue)
	ex2.mu.Unlock()
	if queued != 0 || !first.Holding(jobLease(id)) {
		t.Fatalf("while the first process works job %s, the second queued %d jobs", id, queued)
	}

	// The first process dies: its workers stop, its lease is neither
	// renewed nor released.
	die()
	_ = p.ex.Close()

	m := p.wait(status, tok)
	got := p.exported(m, tok)
	if len(got) != 120 {
		t.Fatalf("exported %d resources, want 120 (each once)", len(got))
	}
	lines := 0
	for _, o := range m.Output {
		lines += len(p.lines(o.URL, tok))
	}
	if lines != 120 {
		t.Errorf("%d lines in the files for 120 resources", lines)
	}
	var held bool
	_ = p.st.View(context.Background(), func(tx *store.Tx) error {
		held = tx.KV(lease.Bucket).Get([]byte(jobLease(id))) != nil
		return nil
	})
	if held {
		t.Error("the finished job's lease is still recorded")
	}
}
