package batch

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/lease"
	"github.com/p2pserver/p2pserver/mdm"
	"github.com/p2pserver/p2pserver/oidcservers"
	"github.com/p2pserver/p2pserver/provenance"
)

// Buckets kept beside the resources.
const (
	// digestBucket: local ref -> version (8 bytes) and SHA-256 of the JSON
	// the last ingestion wrote, to recognize a resource that comes again
	// unchanged.
	digestBucket = "batch_ingested"
)

type pageKind int

const (
	memberPage pageKind = iota // the read of the member's Patient, for MDM
	dataPage                   // a page of the requested Bundle
)

// errJobEnded aborts a write for a job that has ended meanwhile.
var errJobEnded = errors.New("batch: the job has ended")

// mdmError is a failure to link the member; the page is written without
// the link, and the problem reported in the job's mdmNote.
type mdmError struct{ err error }

func (e *mdmError) Error() string { return "link the member: " + e.err.Error() }
func (e *mdmError) Unwrap() error { return e.err }

// retryLater is how long a job waits after a failure of this server's own
// (the database), which is not the job's fault.
const retryLater = 5 * time.Second

// advance does one step of a job: start it, fetch and write one page, or
// end it. It returns the delay before the next step, or done.
func (r *Runner) advance(rn *run) (time.Duration, bool) {
	if rn.lease == nil {
		l, err := r.leases.Acquire(r.ctx, leaseKey(rn.id))
		if err != nil {
			if r.ctx.Err() == nil {
				r.log.Error("batch: take a job's lease", "job", rn.id, "err", err)
			}
			return retryLater, false
		}
		if l == nil {
			return 0, true // another process works on it
		}
		r.mu.Lock()
		rn.lease = l
		r.mu.Unlock()
		// A lost lease cuts short what the job waits for (a fetch, a retry).
		context.AfterFunc(l.Context(), rn.cancel)
	}
	if rn.lease.Context().Err() != nil {
		return 0, true // released or taken over: another process goes on
	}
	rec, err := r.load(rn.id)
	switch {
	case errors.Is(err, errNoJob):
		return 0, true
	case err != nil:
		if r.ctx.Err() == nil {
			r.log.Error("batch: read job", "job", rn.id, "err", err)
		}
		return retryLater, false
	case !rec.Status.Active():
		return 0, true
	case rec.Kind == KindBulk:
		return r.advanceBulk(rn, rec)
	case rec.Status == Stopping:
		return r.endStep(rec, Stopped, "stopped on request before it finished")
	case rec.Status == Starting:
		if err := r.begin(rec); err != nil {
			return r.writeFailed(rn, err)
		}
		return 0, false
	}
	if rn.ts == nil {
		if reason := r.openTokens(rn, rec); reason != "" {
			return r.endStep(rec, Failed, reason)
		}
	}
	kind, u := dataPage, rec.NextURL
	if r.linker.Enabled() && !rec.MemberDone {
		kind, u = memberPage, rec.SourceBase+"/Patient/"+url.PathEscape(rec.SourcePatientID)
	}
	if u == "" {
		return r.endStep(rec, Completed, "")
	}
	var pg *preparedPage
	var failNext string
	var pe *pageError
	if p := rn.prepared; p != nil {
		rn.prepared = nil
		if p.url == u && p.kind == kind {
			if errors.As(p.err, &pe) {
				return r.endStep(rec, Failed, pe.Reason)
			}
			if p.err == nil {
				pg, failNext = p.pg, p.failNext
			}
		}
	}
	if pg == nil {
		res, inflight := r.claim(rn, u, kind)
		if inflight {
			return park, false
		}
		if res == nil {
			r.startFetch(rn, u, kind)
			return park, false
		}
		if errors.Is(res.err, errCanceled) {
			return 0, false // stop request or shutdown: the next step tells which
		}
		var ff *fetchFailure
		if errors.As(res.err, &ff) {
			return r.fetchFailed(rn, rec, kind, u, ff)
		}
		rn.attempts, rn.refreshed = 0, false
		pg, failNext, err = r.prepare(rec, res.body, u, kind)
		if pg != nil {
			pg.fetched = res.took
		}
		if errors.As(err, &pe) {
			return r.endStep(rec, Failed, pe.Reason)
		}
		if err != nil {
			return r.writeFailed(rn, err)
		}
	}
	next := ""
	if failNext == "" && pg.nextRead == 0 {
		next = pg.next
	}
	if next != "" {
		// Fetch the next page while this one is written.
		r.startFetch(rn, next, dataPage)
	}
	type outcome struct {
		ended bool
		err   error
	}
	committed := make(chan outcome, 1)
	go func() {
		ended, err := r.commit(rec.ID, pg, kind, failNext)
		committed <- outcome{ended, err}
	}()
	// While the page is written (the store has one writer), prepare the
	// next one if it arrives: the worker is busy until the write ends
	// anyway, and the writer then finds the next page ready.
	arrived := r.fetchDone(rn)
	var out outcome
	for waiting := true; waiting; {
		select {
		case out = <-committed:
			waiting = false
		case <-arrived:
			arrived = nil
			res, _ := r.claim(rn, next, dataPage)
			if res == nil {
				continue
			}
			if res.err != nil {
				r.unclaim(rn, res) // the next step handles it
				continue
			}
			rn.attempts, rn.refreshed = 0, false
			p := &readyPage{url: next, kind: dataPage}
			p.pg, p.failNext, p.err = r.prepare(rec, res.body, next, dataPage)
			if p.pg != nil {
				p.pg.fetched = res.took
			}
			rn.prepared = p
		}
	}
	if errors.As(out.err, &pe) {
		rn.prepared = nil
		return r.endStep(rec, Failed, pe.Reason)
	}
	if errors.Is(out.err, errJobEnded) || errors.Is(out.err, lease.ErrLost) {
		return 0, true
	}
	if out.err != nil {
		rn.prepared = nil
		return r.writeFailed(rn, out.err)
	}
	return 0, out.ended
}

// heldLease returns the lease this process holds for job id, nil if none.
func (r *Runner) heldLease(id int64) *lease.Lease {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rn := r.runs[id]; rn != nil {
		return rn.lease
	}
	return nil
}

// checkLease fences a write of job id: it fails with lease.ErrLost unless
// this process holds the job's lease as tx sees it.
func (r *Runner) checkLease(tx *store.Tx, id int64) error {
	l := r.heldLease(id)
	if l == nil {
		return lease.ErrLost
	}
	return l.Check(tx)
}

// writeFailed handles a failure of this server's database during a step:
// the job is neither advanced nor failed, and tries again later.
func (r *Runner) writeFailed(rn *run, err error) (time.Duration, bool) {
	if errors.Is(err, lease.ErrLost) {
		return 0, true
	}
	if r.ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return 0, false
	}
	r.log.Error("batch: write failed; the job will try again", "job", rn.id, "err", err)
	return retryLater, false
}

func (r *Runner) load(id int64) (*record, error) {
	var rec *record
	err := r.st.View(r.ctx, func(tx *store.Tx) (err error) {
		rec, err = getJob(tx, id)
		return err
	})
	return rec, err
}

// openTokens builds the job's token source; it returns why it cannot.
func (r *Runner) openTokens(rn *run, rec *record) string {
	srv, err := r.defs.Get(rn.ctx, rec.ServerID)
	if err != nil {
		if errs.Is(err, errs.NotFound) {
			return fmt.Sprintf("the OIDC server definition %d no longer exists", rec.ServerID)
		}
		msg, _ := errs.Public(err)
		return fmt.Sprintf("the OIDC server definition %d cannot be read: %s", rec.ServerID, msg)
	}
	tok, err := r.memberToken(rec)
	if err != nil {
		return "the member's tokens cannot be decrypted with this server's secret key (was -secret-key changed?)"
	}
	ctx := context.WithValue(rn.ctx, oauth2.HTTPClient, r.client)
	ts, err := oidcservers.NewTokenSource(ctx, srv, tok, func(t *oauth2.Token) { r.saveTokens(rec.ID, t) })
	if err != nil {
		msg, _ := errs.Public(err)
		return "the member's tokens cannot be used with OIDC server definition " + fmt.Sprint(rec.ServerID) + ": " + msg
	}
	rn.ts = ts
	return ""
}

// saveTokens keeps the member's refreshed tokens, sealed, with the job, so
// that a restart uses them (a rotated refresh token is the only one left).
func (r *Runner) saveTokens(id int64, tok *oauth2.Token) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.ctx), 30*time.Second)
	defer cancel()
	err := r.st.Write(ctx, func(tx *store.Tx) error {
		if err := r.checkLease(tx, id); err != nil {
			return err
		}
		rec, err := getJob(tx, id)
		if err != nil {
			return err
		}
		rec.TokenRefreshes++
		if rec.Status.Active() {
			if err := r.sealToken(rec, tok); err != nil {
				return err
			}
		}
		return putJob(tx, rec, time.Now().UTC())
	})
	if err != nil {
		r.log.Error("batch: could not keep the member's refreshed tokens; a restart would need the member to authorize again", "job", id, "err", err)
	}
}

// fetchFailed decides what a failed request means for the job.
func (r *Runner) fetchFailed(rn *run, rec *record, kind pageKind, u string, ff *fetchFailure) (time.Duration, bool) {
	switch {
	case ff.retry && ff.after < 0:
		rn.refreshed = true
		return 0, false // with a refreshed token, right away
	case ff.retry:
		rn.attempts++
		if rn.attempts > r.cfg.MaxRetries {
			return r.endStep(rec, Failed, fmt.Sprintf("%s; gave up after %d retries", ff.reason, r.cfg.MaxRetries))
		}
		d := r.backoff(rn.attempts, ff.after)
		r.update(rec.ID, func(rec *record) { rec.Retries++ })
		r.log.Warn("batch: source request failed; retrying", "job", rec.ID, "attempt", rn.attempts, "in", d, "reason", ff.reason)
		return d, false
	case ff.expired && kind == dataPage && u != rec.FirstURL && rec.Restarts < 2:
		// The source no longer holds the search being paged (a restart took
		// long): pages are written idempotently, so start again.
		rn.attempts, rn.refreshed = 0, false
		r.update(rec.ID, func(rec *record) { rec.Restarts++; rec.NextURL = rec.FirstURL })
		r.log.Warn("batch: the source's paging cursor expired; starting the request again", "job", rec.ID)
		return 0, false
	case kind == memberPage && !ff.authz:
		// The member's Patient cannot be read: pull the data anyway.
		rn.attempts, rn.refreshed = 0, false
		r.update(rec.ID, func(rec *record) {
			rec.MemberDone = true
			rec.MDMNote = "the member's Patient could not be read at the source (" + ff.reason + "); no identifier was added"
		})
		return 0, false
	}
	return r.endWith(rec, Failed, ff.reason, ff.final)
}

// update changes a job's record in a small transaction of its own.
func (r *Runner) update(id int64, change func(*record)) {
	err := r.st.Write(r.ctx, func(tx *store.Tx) error {
		if err := r.checkLease(tx, id); err != nil {
			return err
		}
		rec, err := getJob(tx, id)
		if err != nil || !rec.Status.Active() {
			return err
		}
		change(rec)
		return putJob(tx, rec, time.Now().UTC())
	})
	if err != nil && r.ctx.Err() == nil && !errors.Is(err, lease.ErrLost) {
		r.log.Error("batch: update job", "job", id, "err", err)
	}
}

// prepare parses and validates a page and readies it for the write: all
// the work that does not need the store's single writer.
func (r *Runner) prepare(rec *record, body []byte, u string, kind pageKind) (pg *preparedPage, failNext string, err error) {
	pp := &preparer{model: r.st.Registry().Model(), base: rec.SourceBase, memberSrc: rec.SourcePatientID, workers: r.cfg.PrepWorkers,
		expect: expectsReferenced(rec.FirstURL)}
	began := time.Now()
	pg, err = pp.parse(body, u)
	if err != nil {
		return nil, "", err
	}
	if kind == dataPage && pg.single != "" {
		return nil, "", pageErrorf("the source payer answered %s with a %s where a Bundle of results was expected", u, pg.single)
	}
	if kind == memberPage {
		pg.next = ""
	} else if pg.next != "" {
		pg.next, failNext = checkNext(rec.SourceBase, u, pg.next)
	}
	if failNext == "" && pg.next != "" {
		// A link back to a page already read is not fetched; writePage
		// fails the job (and checks again, in its transaction).
		if samePage(pg.next) == samePage(u) {
			pg.nextRead = -1
		} else if err := r.st.View(r.ctx, func(tx *store.Tx) error {
			pg.nextRead = pageRead(tx, rec.ID, pg.next)
			return nil
		}); err != nil {
			return nil, "", err
		}
	}
	present, current, err := r.lookup(pg, rec.SourceBase)
	if err != nil {
		return nil, "", err
	}
	var amend func(*pageResource)
	if r.linker.Enabled() && pg.member != nil {
		amend = func(res *pageResource) {
			if res == pg.member {
				_, _ = r.linker.LinkIngested(res.doc, rec.TargetPatientID)
			}
		}
	}
	pp.finish(pg, present, current, r.st, amend)
	pg.prepared = time.Since(began).Round(time.Millisecond)
	return pg, failNext, nil
}

// lookup reads what the store holds for a parsed page of the source at
// base: which targets of its references outside the page are here
// (present: by the local ref localID makes for each, the one it is
// stored under), and the current version and ingestion digest of each of
// its resources (current). A resource, or a target, that was ingested
// under its earlier digest id (earlierID) and not under its local id
// keeps that id: the resource's localID is set to it, a target's ref in
// present names it.
func (r *Runner) lookup(pg *preparedPage, base string) (present map[string]string, current map[string]storedDigest, err error) {
	inPage := make(map[string]bool, len(pg.resources))
	for _, res := range pg.resources {
		inPage[res.localRef()] = true
	}
	present = map[string]string{}
	current = make(map[string]storedDigest, len(pg.resources))
	err = r.st.View(r.ctx, func(tx *store.Tx) error {
		// stored is the id typ/id is stored under here ("" when none: its
		// own, or its earlier digest id), and whether it is live there.
		stored := func(typ, id string) (here string, live bool) {
			if _, deleted, ok := tx.CurrentVersion(typ, id); ok {
				return id, !deleted
			}
			if old, ok := earlierID(base, typ, id); ok {
				if _, deleted, ok := tx.CurrentVersion(typ, old); ok {
					return old, !deleted
				}
			}
			return "", false
		}
		// Everything asked of the store below, read at once: the
		// resources and targets under their ids and earlier ids, then
		// the digests of those found.
		var keys []store.Key
		want := func(typ, id string) {
			keys = append(keys, store.Key{Type: typ, ID: id})
			if old, ok := earlierID(base, typ, id); ok {
				keys = append(keys, store.Key{Type: typ, ID: old})
			}
		}
		for _, res := range pg.resources {
			want(res.typ, res.localID)
			for _, t := range res.refs {
				if !inPage[t] {
					typ, id, _ := strings.Cut(t, "/")
					want(typ, id)
				}
			}
		}
		tx.Prefetch(keys)
		for _, res := range pg.resources {
			for _, t := range res.refs {
				if _, ok := present[t]; ok || inPage[t] {
					continue
				}
				typ, id, _ := strings.Cut(t, "/")
				if here, live := stored(typ, id); live {
					present[t] = typ + "/" + here
				}
			}
		}
		var found []*pageResource
		var digestKeys [][]byte
		for _, res := range pg.resources {
			if here, _ := stored(res.typ, res.localID); here != "" {
				res.setLocalID(here)
				found = append(found, res)
				digestKeys = append(digestKeys, []byte(res.localRef()))
			}
		}
		tx.KV(digestBucket).Prefetch(digestKeys)
		for _, res := range found {
			v, err := tx.Read(res.typ, res.localID)
			if err != nil {
				continue
			}
			sd := storedDigest{version: v.VersionID}
			if raw := tx.KV(digestBucket).Get([]byte(res.localRef())); len(raw) == 8+sha256.Size {
				sd.digestVersion = int64(binary.BigEndian.Uint64(raw))
				copy(sd.digest[:], raw[8:])
			}
			current[res.localRef()] = sd
		}
		return nil
	})
	return present, current, err
}

// checkNext resolves a next link against the page it came from and checks
// it stays on the source's origin. It returns the link, or why it is not
// followed.
func checkNext(base, page, next string) (string, string) {
	b, err1 := url.Parse(base)
	p, err2 := url.Parse(page)
	if err1 != nil || err2 != nil {
		return "", "the page URL cannot be parsed"
	}
	n, err := p.Parse(next)
	if err != nil || (n.Scheme != "http" && n.Scheme != "https") {
		return "", fmt.Sprintf("the source payer's next link %q is not an http(s) URL", clip(next, 300))
	}
	if !sameOrigin(n, b) {
		return "", fmt.Sprintf("the source payer's next link %s leads to another origin than its fhirEndpoint %s; links are only followed on the same origin", clip(n.Redacted(), 300), b.Scheme+"://"+b.Host)
	}
	n.Fragment = ""
	return n.String(), ""
}

type commitOpts struct {
	skipMDM, skipTask bool
	mdmNote, taskNote string
}

// commit writes a prepared page in one transaction with the job's
// checkpoint. When linking the member or moving the Task fails, the page
// is written again without that part, which is reported in the job. It
// returns whether the job ended.
func (r *Runner) commit(id int64, pg *preparedPage, kind pageKind, failNext string) (bool, error) {
	var o commitOpts
	began := time.Now()
	for {
		var rec *record
		err := r.st.Write(r.ctx, func(tx *store.Tx) (err error) {
			rec, err = r.writePage(tx, id, pg, kind, failNext, &o)
			return err
		})
		var te *taskError
		var me *mdmError
		switch {
		case errors.As(err, &te) && !o.skipTask:
			o.skipTask, o.taskNote = true, publicText(te.err)
			r.log.Warn("batch: the add-payer Task could not be moved", "job", id, "err", te.err)
			continue
		case errors.As(err, &me) && !o.skipMDM:
			o.skipMDM, o.mdmNote = true, "the member could not be linked: "+publicText(me.err)
			r.log.Warn("batch: the member could not be linked", "job", id, "err", me.err)
			continue
		case err != nil:
			return false, err
		}
		r.log.Debug("batch: page written", "job", id, "page", rec.Pages, "resources", len(pg.resources), "status", rec.Status,
			"fetched", pg.fetched, "prepared", pg.prepared, "written", time.Since(began).Round(time.Millisecond))
		if !rec.Status.Active() {
			r.logEnd(rec)
		}
		return !rec.Status.Active(), nil
	}
}

func publicText(err error) string {
	msg, issues := errs.Public(err)
	for i, is := range issues {
		if i == 3 {
			break
		}
		msg += "; " + strings.TrimPrefix(is.Path+": ", ": ") + is.Message
	}
	return clip(msg, 500)
}

// writePage is the transaction of one page.
func (r *Runner) writePage(tx *store.Tx, id int64, pg *preparedPage, kind pageKind, failNext string, o *commitOpts) (*record, error) {
	now := time.Now().UTC()
	if err := r.checkLease(tx, id); err != nil {
		return nil, err
	}
	rec, err := getJob(tx, id)
	if err != nil {
		return nil, err
	}
	if !rec.Status.Active() {
		return rec, errJobEnded
	}
	if why := taskEnded(tx, rec.TaskID); why != "" {
		return rec, r.end(tx, rec, Stopped, why, false, o, now)
	}
	if n := rec.total() + len(pg.resources); kind == dataPage && n > r.cfg.MaxResources {
		return rec, r.end(tx, rec, Failed, fmt.Sprintf("the source payer sent more than %d resources, the most one job reads (-batch-max-resources): "+
			"%d were written from %d pages, and page %d with %d more was not (%s)", r.cfg.MaxResources, rec.total(), rec.Pages, rec.Pages+1, len(pg.resources), clip(pg.url, 300)), false, o, now)
	}
	w, err := r.writeResources(tx, rec.ID, pg)
	if err != nil {
		return nil, err
	}
	if o.skipMDM {
		rec.MDMNote = o.mdmNote
	} else if pg.member != nil && r.linker.Enabled() {
		if err := r.linkMember(tx, rec, pg.member); err != nil {
			return nil, &mdmError{err}
		}
	}
	if kind == memberPage {
		rec.MemberDone = true
		if pg.member == nil {
			rec.MDMNote = fmt.Sprintf("the source payer did not return Patient/%s when it was read; no identifier was added", rec.SourcePatientID)
		}
	}
	rec.Pages++
	if err := r.recordWritten(tx, rec, provenance.IngestedPage{
		ID:          fmt.Sprintf("batch-%d-page-%d", rec.ID, rec.Pages),
		Recorded:    now,
		PageURL:     pg.url,
		Description: fmt.Sprintf("page %d of P2P batch job %d", rec.Pages, rec.ID),
	}, pg, w); err != nil {
		return nil, err
	}
	if kind == dataPage {
		rec.NextURL = pg.next
		if pg.next != "" && failNext == "" {
			if err := markPageRead(tx, rec.ID, pg.url, rec.Pages); err != nil {
				return nil, err
			}
			n := pageRead(tx, rec.ID, pg.next)
			if pg.nextRead > 0 {
				n = pg.nextRead
			}
			if n > 0 {
				failNext = repeatedLink(rec.Pages, pg.next, n)
			} else if rec.Pages >= r.cfg.MaxPages {
				failNext = fmt.Sprintf("the source payer's next links went on past %d pages, the most one job reads (-batch-max-pages); the pages read are kept", r.cfg.MaxPages)
			}
		}
	}
	switch {
	case failNext != "":
		return rec, r.end(tx, rec, Failed, failNext, false, o, now)
	case kind == dataPage && pg.next == "":
		return rec, r.end(tx, rec, Completed, "", false, o, now)
	}
	return rec, putJob(tx, rec, now)
}

// recordWritten writes in tx the Provenance of a page (or bulk file
// chunk) whose resources w holds, when it wrote or kept any, naming rec's
// source payer; prov gives its id, time, URL and description. It then adds
// the page's counts to rec: resources by type, those skipped, versions,
// unchanged and relinked.
func (r *Runner) recordWritten(tx *store.Tx, rec *record, prov provenance.IngestedPage, pg *preparedPage, w writtenPage) error {
	if len(w.written) > 0 {
		prov.SourceName, prov.SourceOrganizationID = rec.SourceName, rec.SourceOrganizationID
		prov.Resources, prov.Versioned = w.written, r.cfg.VersionedReferences
		doc, err := provenance.ForIngestedPage(prov)
		if err != nil {
			return errs.E("batch.provenance", errs.Internal, err)
		}
		if !pg.stamped.IsZero() {
			// With the page's stamp: one made now, after the stamps of
			// pages prepared meanwhile, would have them stamped again.
			r.st.PrepareAt(doc, pg.stamped)
		}
		if _, err := r.fhir.Put(tx, doc, 0); err != nil {
			return fmt.Errorf("batch: write Provenance %s: %w", doc.ID, err)
		}
		rec.ProvenanceIDs = append(rec.ProvenanceIDs, doc.ID)
	}
	if rec.Resources == nil {
		rec.Resources = map[string]int{}
	}
	for _, res := range pg.resources {
		rec.Resources[res.typ]++
	}
	for typ, n := range pg.skipped {
		if rec.Skipped == nil {
			rec.Skipped = map[string]int{}
		}
		rec.Skipped[typ] += n
	}
	rec.Versions += w.versions
	rec.Unchanged += w.unchanged
	rec.Relinked += w.relinked
	return nil
}

// writtenPage is what writeResources did.
type writtenPage struct {
	written                       []provenance.IngestedResource
	versions, unchanged, relinked int
}

// writeResources writes a prepared page's resources in tx by the ingest
// rules every job follows: a resource stored as it comes is not written
// again, a resource is written only over what ingestion from the same
// source identity put there (foreign), the digest of what is written is
// kept, the references waiting for it are made local (relink), and the
// page's references to resources not here yet are recorded for job.
func (r *Runner) writeResources(tx *store.Tx, job int64, pg *preparedPage) (writtenPage, error) {
	var w writtenPage
	inPage := make(map[string]bool, len(pg.resources))
	for _, res := range pg.resources {
		inPage[res.localRef()] = true
	}
	w.written = make([]provenance.IngestedResource, 0, len(pg.resources))
	digests := tx.KV(digestBucket)
	waiting, err := r.readForPage(tx, pg, inPage)
	if err != nil {
		return w, err
	}
	for _, res := range pg.resources {
		if res.unchanged {
			// Still the version found unchanged (read without its JSON).
			if vid, deleted, ok := tx.CurrentVersion(res.typ, res.localID); ok && !deleted && vid == res.version {
				w.written = append(w.written, provenance.IngestedResource{Type: res.typ, ID: res.localID, Version: vid})
				w.unchanged++
				continue
			}
		}
		if why := foreign(tx, res); why != "" {
			return w, pageErrorf("%s/%s from %s cannot be stored: its local id %s/%s %s; nothing of it was written and nothing stored was changed",
				res.typ, clip(res.srcID, 64), pg.url, res.typ, res.localID, why)
		}
		v, err := r.fhir.Put(tx, res.doc, 0)
		if err != nil {
			return w, refused(res, pg.url, err)
		}
		w.versions++
		if err := digests.Put([]byte(res.localRef()), digestValue(v.VersionID, res.digest)); err != nil {
			return w, err
		}
		w.written = append(w.written, provenance.IngestedResource{Type: res.typ, ID: res.localID, Version: v.VersionID})
		n, err := r.relink(tx, res.localRef(), waiting, inPage)
		if err != nil {
			return w, err
		}
		w.relinked += n
	}
	for _, p := range pg.pending {
		if err := putPending(tx, job, p); err != nil {
			return w, err
		}
	}
	return w, nil
}

// foreign says why res may not be written over what its local id holds,
// or "" when it may: ingestion writes only over resources it created (its
// own record of what it wrote is kept in digestBucket) from the same
// source identity (meta.source). A resource there from anywhere
// else (written by a client, another source, a facade), live or deleted (a
// deleted resource keeps its owner: its last live version decides), is
// never overwritten.
func foreign(tx *store.Tx, res *pageResource) string {
	if _, _, ok := tx.CurrentVersion(res.typ, res.localID); !ok {
		return "" // nothing there (what a first ingestion finds, asked without making a NotFound error)
	}
	v, err := tx.Read(res.typ, res.localID)
	switch {
	case v == nil:
		return "" // nothing there
	case errs.Is(err, errs.Gone):
		v = lastLive(tx, v)
		if v == nil {
			return ""
		}
	case err != nil:
		return "cannot be read"
	}
	switch src := metaSource(v.JSON); {
	case src == res.source && tx.KV(digestBucket).Get([]byte(res.localRef())) != nil:
		return ""
	case src == res.source:
		// meta.source is the client's to write: only ingestion's own
		// record says ingestion put the resource there.
		return "holds a resource that claims this source but was not ingested here"
	case src == "":
		return "holds a resource that was not ingested from a source payer"
	default:
		return "holds a resource ingested from another source"
	}
}

// lastLive returns the last version before deletion marker del that is not
// itself a deletion, nil when there is none.
func lastLive(tx *store.Tx, del *store.Version) *store.Version {
	for vid := del.VersionID - 1; vid >= 1; vid-- {
		if v, err := tx.VRead(del.Type, del.ID, vid); err == nil {
			return v
		}
	}
	return nil
}

// metaSource reads meta.source from a resource's JSON.
func metaSource(raw []byte) string {
	var r struct {
		Meta struct {
			Source string `json:"source"`
		} `json:"meta"`
	}
	if json.Unmarshal(raw, &r) != nil {
		return ""
	}
	return r.Meta.Source
}

func digestValue(version int64, digest [sha256.Size]byte) []byte {
	return append(binary.BigEndian.AppendUint64(nil, uint64(version)), digest[:]...)
}

// refused explains a resource the store or a validator would not take.
func refused(res *pageResource, page string, err error) error {
	if errs.KindOf(err) == errs.Internal {
		return err
	}
	return pageErrorf("%s/%s from the page %s was refused here: %s", res.typ, clip(res.srcID, 64), page, publicText(err))
}

// linkMember adds the source's member identifier to the member and links
// the member with the ingested copy of their source Patient.
func (r *Runner) linkMember(tx *store.Tx, rec *record, member *pageResource) error {
	l, err := r.linkTo(tx, rec.TargetPatientID, mdm.Assigner{Name: rec.SourceName, OrganizationID: rec.SourceOrganizationID}, member)
	if err != nil {
		return err
	}
	if l.note != "" {
		rec.MDMNote = l.note
	}
	if l.linked {
		rec.LinkedPatient = "Patient/" + member.localID
		rec.MemberIdent = l.ident
	}
	return nil
}

// memberLink is what linkTo did: linked tells whether the member was
// linked, ident is the system|value added to the member ("" when none),
// note says what could not be done.
type memberLink struct {
	linked      bool
	ident, note string
}

// linkTo adds the source's member identifier (assigned by the source
// payer by) to our member Patient/target and links target with the
// ingested copy of their source Patient, member, in tx.
func (r *Runner) linkTo(tx *store.Tx, target string, by mdm.Assigner, member *pageResource) (memberLink, error) {
	v, err := tx.Read("Patient", target)
	if err != nil {
		return memberLink{note: fmt.Sprintf("the member Patient/%s is not on this server any more; it was not linked and no identifier was added", target)}, nil
	}
	var l memberLink
	ident, ok := mdm.MemberIdentifier(member.doc.Map)
	ok = ok && r.linker.AddsIdentifiers()
	if !ok && r.linker.AddsIdentifiers() {
		l.note = "the member's Patient at the source has no CARIN BB member identifier (um, MB, pat or MR); the records were linked, but no identifier was added"
	}
	doc, err := r.linker.AmendMember(v, ident, by, member.localID)
	if err != nil {
		return l, err
	}
	if doc != nil {
		if _, err := r.fhir.Put(tx, doc, v.VersionID); err != nil {
			return l, err
		}
	}
	l.linked = true
	if ok {
		l.ident = r.linker.System() + "|" + ident.Value
	}
	return l, nil
}

// begin marks a job STARTED and its Task in progress.
func (r *Runner) begin(rec *record) error {
	var o commitOpts
	for {
		err := r.st.Write(r.ctx, func(tx *store.Tx) error {
			if err := r.checkLease(tx, rec.ID); err != nil {
				return err
			}
			cur, err := getJob(tx, rec.ID)
			if err != nil || cur.Status != Starting {
				return err
			}
			now := time.Now().UTC()
			cur.Status, cur.Started = Started, now
			if o.skipTask {
				cur.TaskNote = o.taskNote
			} else if err := r.moveTask(tx, cur, taskChange{status: "in-progress",
				business: fmt.Sprintf("Your data is being copied from %s.", cur.SourceName)}, now); err != nil {
				return err
			}
			return putJob(tx, cur, now)
		})
		var te *taskError
		if errors.As(err, &te) && !o.skipTask {
			o.skipTask, o.taskNote = true, "the add-payer Task could not be set in progress: "+publicText(te.err)
			r.log.Warn("batch: the add-payer Task could not be moved", "job", rec.ID, "err", te.err)
			continue
		}
		if err == nil {
			r.log.Info("batch: job started", "job", rec.ID, "server", rec.ServerID, "request", rec.BundleRequest)
		}
		return err
	}
}

// endStep ends a job in its own transaction, as the last step. A failure
// ended here is not final: the member's request stays open.
func (r *Runner) endStep(rec *record, status Status, reason string) (time.Duration, bool) {
	return r.endWith(rec, status, reason, false)
}

// jobToEnd reads job id in tx, under this process's lease, for the write
// that ends it with status; ok is false when that write has nothing to
// do: the job has ended already, or status is Stopped and no stop was
// asked.
func (r *Runner) jobToEnd(tx *store.Tx, id int64, status Status) (cur *record, ok bool, err error) {
	if err := r.checkLease(tx, id); err != nil {
		return nil, false, err
	}
	cur, err = getJob(tx, id)
	if err != nil || !cur.Status.Active() || (status == Stopped && cur.Status != Stopping) {
		return cur, false, err
	}
	return cur, true, nil
}

// endWith is endStep, with final saying whether a failure ends the
// member's add-payer request too (see end).
func (r *Runner) endWith(rec *record, status Status, reason string, final bool) (time.Duration, bool) {
	var o commitOpts
	for {
		var cur *record
		err := r.st.Write(r.ctx, func(tx *store.Tx) (err error) {
			var ok bool
			if cur, ok, err = r.jobToEnd(tx, rec.ID, status); !ok {
				return err
			}
			return r.end(tx, cur, status, reason, final, &o, time.Now().UTC())
		})
		var te *taskError
		if errors.As(err, &te) && !o.skipTask {
			o.skipTask, o.taskNote = true, publicText(te.err)
			r.log.Warn("batch: the add-payer Task could not be moved", "job", rec.ID, "err", te.err)
			continue
		}
		if errors.Is(err, lease.ErrLost) {
			return 0, true
		}
		if err != nil {
			if r.ctx.Err() != nil {
				return 0, false
			}
			r.log.Error("batch: could not end the job; trying again", "job", rec.ID, "err", err)
			return retryLater, false
		}
		if cur != nil && !cur.Status.Active() {
			r.logEnd(cur)
		}
		return 0, true
	}
}

// end records a job's final status in tx: end time, reason, the tokens
// dropped, and the job's line in its Task's output (the history of
// attempts). The Task itself moves only when the member's request is
// over: completed, or failed when final says the cause is one only the
// member can remove (their authorization has ended), which tells the
// member. Any other failure, and a stop, leave the Task open, so the back
// office can start a new job for it once the cause is fixed (or end the
// request itself by failing the Task).
func (r *Runner) end(tx *store.Tx, rec *record, status Status, reason string, final bool, o *commitOpts, now time.Time) error {
	toSource, relinked, err := r.settle(tx, rec.ID)
	if err != nil {
		return err
	}
	if err := forgetPagesRead(tx, rec.ID); err != nil {
		return err
	}
	rec.ToSource += toSource
	rec.Relinked += relinked
	rec.Status, rec.Ended, rec.Reason = status, now, reason
	rec.Final = status == Failed && final
	rec.SealedAccess, rec.SealedRefresh, rec.AccessExpiry = nil, nil, time.Time{}
	if l := r.heldLease(rec.ID); l != nil {
		if err := l.ReleaseTx(tx); err != nil {
			return err
		}
	}
	if o.skipTask {
		rec.TaskNote = "the add-payer Task could not be moved: " + o.taskNote
	} else {
		var ch taskChange
		switch {
		case status == Completed:
			ch = taskChange{status: "completed", business: fmt.Sprintf("Your data from %s has been copied (%d records).", rec.SourceName, rec.total())}
		case rec.Final:
			ch = taskChange{status: "failed", reason: reason, business: fmt.Sprintf(
				"We could not copy your data from %s: your permission for us to read it has ended. To bring it over, make a new request and sign in at %s again.", rec.SourceName, rec.SourceName)}
		}
		if err := r.moveTask(tx, rec, ch, now); err != nil {
			return err
		}
	}
	return putJob(tx, rec, now)
}

func (r *Runner) logEnd(rec *record) {
	args := []any{"job", rec.ID, "status", rec.Status, "pages", rec.Pages, "resources", rec.total(), "versions", rec.Versions}
	if rec.Status == Failed {
		r.log.Warn("batch: job failed", append(args, "reason", rec.Reason)...)
		return
	}
	r.log.Info("batch: job ended", args...)
}

// expectsReferenced reports whether a request promises the resources its
// resources refer to: Patient/$everything returns the member's compartment
// and what it references.
func expectsReferenced(firstURL string) bool {
	path, _, _ := strings.Cut(firstURL, "?")
	return strings.HasSuffix(path, "/$everything")
}
