package batch

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/lease"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// secondRunner is another process's Runner on the target's database: its
// own FHIR server over the same store and its own lease owner.
func (tg *targetPayer) secondRunner(t *testing.T, owner string, d time.Duration) *Runner {
	t.Helper()
	fs := fhir.New(tg.st, fhir.Config{BaseURL: tg.URL + "/fhir", Logger: testLogger(t)})
	m := lease.New(tg.st, lease.Config{Owner: owner, Duration: d, Scan: 20 * time.Millisecond, Logger: testLogger(t)})
	ctx, cancel := context.WithCancel(context.Background())
	m.Start(ctx)
	cfg := tg.cfg
	cfg.Leases = m
	cfg.Logger = testLogger(t)
	r, err := New(fs, tg.repo, tg.cipher, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); cancel() })
	return r
}

// TestJobTakenOverWhenItsProcessDies runs two Runners (two processes) on
// one database. While the first works a job, the second leaves it alone;
// the first then dies between pages (it stops without releasing the job's
// lease), and the second takes the job over once the lease has expired and
// finishes it from the checkpoint: every resource written once, one
// Provenance per page.
func TestJobTakenOverWhenItsProcessDies(t *testing.T) {
	// The first process: its lease renewals stop when it dies.
	var tgLeases *lease.Manager
	alive, die := context.WithCancel(context.Background())
	defer die()
	x := newExchange(t, Config{VersionedReferences: true})
	tgLeases = lease.New(x.tg.st, lease.Config{Owner: "first", Duration: 3 * time.Second, Scan: 20 * time.Millisecond, Logger: testLogger(t)})
	tgLeases.Start(alive)
	x.tg.runner.Close()
	x.tg.cfg.Leases = tgLeases
	first, err := New(x.tg.fhir, x.tg.repo, x.tg.cipher, x.tg.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Start(alive); err != nil {
		t.Fatal(err)
	}
	x.tg.runner = first // the API enqueues here, as in the process that took the request

	request := x.everything(40)
	want := x.src.everything(request)
	release := make(chan struct{})
	var blocked atomic.Int64
	x.src.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if offset(r) == 80 {
			select {
			case <-release:
			default:
				blocked.Add(1)
				select {
				case <-release:
				case <-r.Context().Done():
					return true
				}
			}
		}
		return false
	})
	access, refresh := x.token(t, oidctest.Grant{})
	id := x.tg.startJob(x.pid, jobBody(access, refresh, request, x.patient, "member-1", "task-1"))
	before := x.tg.wait(x.pid, id, "two pages and the third in flight", func(j Job) bool {
		return j.Progress.PagesFetched == 3 && blocked.Load() > 0
	})
	// The second process starts once the first has the job under way.
	second := x.tg.secondRunner(t, "second", 3*time.Second)
	// Both alive: the second sees the job unfinished but held, and does
	// not work it (it may queue it and find the lease taken). The waits
	// give its scans a chance; they are not what is asserted.
	for range 5 {
		second.scan()
		time.Sleep(second.leases.Scan())
	}
	if second.leases.Holding(leaseKey(id)) || !tgLeases.Holding(leaseKey(id)) || blocked.Load() != 1 {
		t.Fatalf("while the first process holds job %d: the second holds it %v, the page in flight was asked for %d times",
			id, second.leases.Holding(leaseKey(id)), blocked.Load())
	}

	// The first process dies: no more renewals, no release.
	die()
	first.Close()
	close(release)

	job := x.tg.waitEnd(x.pid, id)
	if job.BatchStatus != Completed {
		t.Fatalf("job %s: %s", job.BatchStatus, job.FailureReason)
	}
	if job.Progress.PagesFetched != 1+(len(want)+39)/40 || len(job.Progress.ProvenanceIDs) != job.Progress.PagesFetched {
		t.Errorf("%d pages and %d Provenance after the takeover", job.Progress.PagesFetched, len(job.Progress.ProvenanceIDs))
	}
	if !strings.HasPrefix(strings.Join(job.Progress.ProvenanceIDs, ","), strings.Join(before.Progress.ProvenanceIDs, ",")) {
		t.Errorf("Provenance before the takeover %v, after %v", before.Progress.ProvenanceIDs, job.Progress.ProvenanceIDs)
	}
	got := x.tg.ingested(x.src.URL)
	if len(got) != len(want) {
		t.Errorf("%d resources after the takeover, the source has %d", len(got), len(want))
	}
	for ref, m := range got {
		if v := m["meta"].(map[string]any)["versionId"]; v != "1" {
			t.Errorf("%s is at version %v: written more than once", ref, v)
		}
	}
	var provenance int
	x.tg.st.View(context.Background(), func(tx *store.Tx) error {
		provenance = len(tx.AllIDs("Provenance"))
		return nil
	})
	if provenance != job.Progress.PagesFetched {
		t.Errorf("%d Provenance resources for %d pages", provenance, job.Progress.PagesFetched)
	}
	// The job's end released its lease.
	var held bool
	x.tg.st.View(context.Background(), func(tx *store.Tx) error {
		held = tx.KV(lease.Bucket).Get([]byte(leaseKey(id))) != nil
		return nil
	})
	if held {
		t.Error("the finished job's lease is still recorded")
	}
	x.checkIntact(t, job, 1)
}

// TestStaleHolderCannotWrite: a Runner whose lease was taken over (it
// stalled past the expiry) cannot commit a page or end the job: its writes
// are fenced.
func TestStaleHolderCannotWrite(t *testing.T) {
	x := newExchange(t, Config{})
	r := x.tg.runner
	// A job record, as the API makes it, worked by nobody yet.
	r.Close()
	rec := &record{ID: 7, ServerID: x.pid, Status: Started, SourceBase: x.src.URL, NextURL: x.src.URL + "/Patient"}
	if err := x.tg.st.Write(context.Background(), func(tx *store.Tx) error { return putJob(tx, rec, time.Now()) }); err != nil {
		t.Fatal(err)
	}
	clock := time.Now()
	now := func() time.Time { return clock }
	stale := lease.New(x.tg.st, lease.Config{Owner: "stale", Now: now})
	l, err := stale.Acquire(context.Background(), leaseKey(7))
	if err != nil || l == nil {
		t.Fatal(l, err)
	}
	r.runs[7] = &run{id: 7, lease: l}
	clock = clock.Add(time.Hour)
	other := lease.New(x.tg.st, lease.Config{Owner: "other", Now: now})
	if l2, _ := other.Acquire(context.Background(), leaseKey(7)); l2 == nil {
		t.Fatal("the expired lease was not taken over")
	}
	r.ctx = context.Background()
	if d, done := r.endStep(rec, Failed, "should not be written"); !done || d != 0 {
		t.Fatalf("endStep by the stale holder: %v, %v; want it to give the job up", d, done)
	}
	got, _ := r.load(7)
	if got.Status != Started {
		t.Fatalf("the stale holder ended the job: %s %q", got.Status, got.Reason)
	}
}
