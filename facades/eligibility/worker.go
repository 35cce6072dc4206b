package eligibility

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/p2pserver/p2pserver/facades/vendorhttp"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/lease"
)

// Job states.
const (
	stateSubmit = "submit" // not yet sent to the vendor
	stateWait   = "wait"   // sent; polling WaitRef until the vendor answers
	stateHold   = "hold"   // waiting for input (a 2FA code) about WaitRef
	stateRelay  = "relay"  // a 2FA code is to be relayed for WaitRef
)

// job is the durable record of one check, kept in bJobs until it ends.
type job struct {
	RequestID  string  `json:"requestId"`
	TaskID     string  `json:"taskId"`
	ResponseID string  `json:"responseId"`
	Vendor     string  `json:"vendor"`
	PayerID    string  `json:"payerId"`
	Req        Request `json:"request"`
	State      string  `json:"state"`
	// Ref is the vendor's id of the check; WaitRef what is polled (the
	// check, or a connection the check waits for).
	Ref     string   `json:"ref,omitempty"`
	WaitRef string   `json:"waitRef,omitempty"`
	Refs    []string `json:"refs,omitempty"` // every ref indexed in bRefs
	Status  string   `json:"status,omitempty"`
	// Attempts counts consecutive transient failures; Polls the polls made.
	Attempts  int       `json:"attempts,omitempty"`
	Polls     int       `json:"polls,omitempty"`
	LastError string    `json:"lastError,omitempty"`
	NextAt    time.Time `json:"nextAt"`
	Created   time.Time `json:"created"`
	Started   bool      `json:"started,omitempty"`
	// Code is a 2FA code to relay: 1 + sealed, or 0 + plain without a key.
	Code []byte `json:"code,omitempty"`
	// Submitting is set, before a create call is made, to when it was
	// made, and cleared when its outcome is recorded: a process that finds
	// it set on a check it takes over knows that the process before it
	// may have created the check at the vendor, and never repeats the call
	// blindly (Request.Unconfirmed).
	Submitting time.Time `json:"submitting,omitzero"`
	// Seq changes whenever someone other than the worker changes the job,
	// so a vendor answer that raced with the change is not applied.
	Seq int `json:"seq,omitempty"`
	// Wake counts the "look again now" marks (a vendor's webhook, a
	// connection's new status): a vendor answer that was under way when
	// one came is applied, and the vendor is asked again at once, since
	// the answer may predate the news (see record).
	Wake int `json:"wake,omitempty"`
}

// wake marks the job to be looked at again now. The mark survives a
// vendor call under way: record sees Wake changed.
func (j *job) wake(now time.Time) {
	j.Wake++
	j.NextAt = now
}

func putJob(tx *store.Tx, j *job) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return tx.KV(bJobs).Put([]byte(j.RequestID), b)
}

func getJob(tx *store.Tx, id string) (*job, error) {
	b := tx.KV(bJobs).Get([]byte(id))
	if b == nil {
		return nil, nil
	}
	var j job
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, errs.E("eligibility.job", errs.Internal, fmt.Errorf("job %s: %w", id, err))
	}
	return &j, nil
}

func deleteJob(tx *store.Tx, j *job) error {
	for _, r := range j.Refs {
		if err := tx.KV(bRefs).Delete(refKey(j.Vendor, r, j.RequestID)); err != nil {
			return err
		}
	}
	return tx.KV(bJobs).Delete([]byte(j.RequestID))
}

func refKey(vendor, ref, reqID string) []byte {
	return []byte(vendor + "\x00" + ref + "\x00" + reqID)
}

func (j *job) index(tx *store.Tx, ref string) error {
	if ref == "" {
		return nil
	}
	for _, r := range j.Refs {
		if r == ref {
			return nil
		}
	}
	j.Refs = append(j.Refs, ref)
	return tx.KV(bRefs).Put(refKey(j.Vendor, ref, j.RequestID), nil)
}

// jobsFor returns the request ids of the checks indexed under a vendor ref.
func jobsFor(tx *store.Tx, vendor, ref string) ([]string, error) {
	prefix := vendor + "\x00" + ref + "\x00"
	var ids []string
	err := tx.KV(bRefs).Scan([]byte(prefix), func(k, _ []byte) (bool, error) {
		rest, ok := cutPrefix(string(k), prefix)
		if !ok {
			return false, nil
		}
		ids = append(ids, rest)
		return true, nil
	})
	return ids, err
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) < len(p) || s[:len(p)] != p {
		return "", false
	}
	return s[len(p):], true
}

func (s *Service) loop(ctx context.Context) {
	defer close(s.done)
	for _, c := range s.order {
		if p, ok := c.(Preparer); ok {
			if err := p.Prepare(ctx, s.cfg.Routes); err != nil && ctx.Err() == nil {
				s.log.Warn("eligibility: connector not prepared", "vendor", c.Vendor(), "err", err)
			}
		}
	}
	close(s.ready)
	conc := s.cfg.Concurrency
	if conc <= 0 {
		conc = 4
	}
	sem := make(chan struct{}, conc)
	var pruned time.Time
	for {
		if s.now().Sub(pruned) > time.Hour {
			s.pruneDeliveries(ctx)
			pruned = s.now()
		}
		next := s.dispatch(ctx, sem)
		// Other processes add checks and wake them too: look now and then.
		wait := min(time.Minute, s.leases.Scan())
		if !next.IsZero() {
			wait = min(wait, max(next.Sub(s.now()), 0))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			// Wait for the calls under way: they end as ctx is cancelled.
			for i := 0; i < conc; i++ {
				sem <- struct{}{}
			}
			return
		case <-s.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// dispatch starts the due jobs that are not being worked on, as far as the
// concurrency allows, and returns when the next one is due.
func (s *Service) dispatch(ctx context.Context, sem chan struct{}) time.Time {
	var due []string
	var next time.Time
	now := s.now()
	err := s.st.View(ctx, func(tx *store.Tx) error {
		return tx.KV(bJobs).Scan(nil, func(k, v []byte) (bool, error) {
			var j job
			if err := json.Unmarshal(v, &j); err != nil {
				s.log.Error("eligibility: unreadable job", "request", string(k), "err", err)
				return true, nil
			}
			if j.NextAt.After(now) {
				if next.IsZero() || j.NextAt.Before(next) {
					next = j.NextAt
				}
				return true, nil
			}
			if !s.leases.Free(tx, checkLease(j.RequestID)) {
				// Worked by another process: looked at again at the next
				// scan, not at once (which would spin while it works).
				return true, nil
			}
			due = append(due, j.RequestID)
			return true, nil
		})
	})
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("eligibility: scan jobs", "err", err)
		}
		return now.Add(time.Second)
	}
	for _, id := range due {
		if !s.claim(id) {
			continue
		}
		select {
		case sem <- struct{}{}:
		default:
			s.release(id)
			return now.Add(100 * time.Millisecond) // all workers busy: look again soon
		}
		go func(id string) {
			defer func() {
				<-sem
				s.release(id)
				s.poke()
			}()
			s.step(ctx, id)
		}(id)
	}
	return next
}

// claim marks a job as being worked on; false if it already is.
func (s *Service) claim(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy[id] {
		return false
	}
	s.busy[id] = true
	return true
}

func (s *Service) release(id string) {
	s.mu.Lock()
	delete(s.busy, id)
	s.mu.Unlock()
}

// checkLease is the lease key of check id.
func checkLease(id string) string { return "eligibility/" + id }

// errTakenOver is recorded for a check whose create call was under way
// in a process that stopped before recording its outcome.
var errTakenOver = Unconfirmed(errs.E("eligibility.takeover", errs.Transient,
	"the server process that sent the request stopped before the vendor's answer was recorded"))

// step makes one vendor call for a job and records what follows, under
// the check's lease: of several processes on the database, one makes it.
func (s *Service) step(ctx context.Context, id string) {
	l, err := s.leases.Acquire(ctx, checkLease(id))
	if err != nil || l == nil {
		if err != nil && ctx.Err() == nil {
			s.log.Error("eligibility: take a check's lease", "request", id, "err", err)
		}
		return
	}
	defer func() {
		if ctx.Err() == nil && l.Context().Err() == nil {
			_ = l.Release(ctx)
		}
	}()
	ctx, cancel := context.WithCancel(context.WithValue(ctx, leaseKey{}, l))
	defer cancel()
	defer context.AfterFunc(l.Context(), cancel)()
	var j *job
	if err := s.st.View(ctx, func(tx *store.Tx) error {
		var err error
		j, err = getJob(tx, id)
		return err
	}); err != nil || j == nil {
		return
	}
	if j.NextAt.After(s.now()) {
		return
	}
	route, ok := s.routes[j.PayerID]
	conn := s.conns[j.Vendor]
	if !ok || conn == nil || route.Vendor != j.Vendor {
		s.log.Error("eligibility: the payer's route changed while a check was under way", "request", id, "payer", j.PayerID, "vendor", j.Vendor)
		s.record(ctx, j, Result{}, errs.E("eligibility.route", errs.Internal, "the payer is no longer routed to "+j.Vendor))
		return
	}
	if !j.Started {
		if err := s.start(ctx, j); err != nil {
			if !errors.Is(err, lease.ErrLost) {
				s.log.Error("eligibility: start check", "request", id, "err", err)
			}
			return
		}
	}
	if j.State == stateSubmit {
		if !j.Submitting.IsZero() && j.Req.Unconfirmed.IsZero() {
			// Taken over from a process that may have made the check.
			s.record(ctx, j, Result{}, errTakenOver)
			return
		}
		if err := s.markSubmitting(ctx, j); err != nil {
			if !errors.Is(err, lease.ErrLost) && ctx.Err() == nil {
				s.log.Error("eligibility: record a create call", "request", id, "err", err)
			}
			return
		}
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var res Result
	switch j.State {
	case stateSubmit:
		res, err = s.submitCheck(cctx, conn, route, j)
	case stateWait, stateHold:
		res, err = conn.Poll(cctx, route, j.WaitRef, &j.Req)
	case stateRelay:
		tf, ok := conn.(TwoFactor)
		if !ok {
			err = errs.E("eligibility.relay", errs.Internal, j.Vendor+" does not take 2FA codes")
			break
		}
		var code string
		code, err = s.openCode(j.Code)
		if err == nil {
			res, err = tf.Confirm2FA(cctx, j.WaitRef, code)
		}
	}
	if ctx.Err() != nil {
		return // shutting down: the job is retried after a restart
	}
	s.record(ctx, j, res, err)
}

// errNotConfirmed is what step records for a check whose create call went
// unconfirmed and whose vendor's webhook did not confirm it in time.
var errNotConfirmed = errors.New("the vendor did not confirm the check")

// submitCheck starts a check at the vendor, never repeating a create call that
// may have been carried out (Request.Unconfirmed): a Finder looks for what
// it made first; for other vendors the check waited for the vendor's
// webhook (which adopts the check, see Service.webhook) and now fails.
func (s *Service) submitCheck(ctx context.Context, conn Connector, route Route, j *job) (Result, error) {
	if j.Req.Unconfirmed.IsZero() {
		return conn.Submit(ctx, route, &j.Req)
	}
	f, ok := conn.(Finder)
	if !ok {
		return Result{}, errNotConfirmed
	}
	res, found, err := f.Find(ctx, route, &j.Req)
	if err != nil || found {
		return res, err
	}
	return conn.Submit(ctx, route, &j.Req)
}

func (s *Service) openCode(b []byte) (string, error) {
	if len(b) == 0 {
		return "", errs.E("eligibility.relay", errs.Internal, "no code to relay")
	}
	if b[0] == 0 {
		return string(b[1:]), nil
	}
	p, err := s.cipher.Open(b[1:])
	if err != nil {
		return "", errs.E("eligibility.relay", errs.Internal, "the stored 2FA code cannot be decrypted", err)
	}
	return string(p), nil
}

// leaseKey carries a step's lease in its context.
type leaseKey struct{}

// fence fails with lease.ErrLost unless the step of ctx still holds its
// check's lease as tx sees it.
func fence(ctx context.Context, tx *store.Tx) error {
	l, _ := ctx.Value(leaseKey{}).(*lease.Lease)
	if l == nil {
		return lease.ErrLost
	}
	return l.Check(tx)
}

// markSubmitting records that a create call is about to be made.
func (s *Service) markSubmitting(ctx context.Context, j *job) error {
	now := s.now().UTC()
	return s.st.Write(workerContext(ctx), func(tx *store.Tx) error {
		if err := fence(ctx, tx); err != nil {
			return err
		}
		cur, err := getJob(tx, j.RequestID)
		if err != nil || cur == nil {
			return err
		}
		cur.Submitting = now
		j.Submitting = now
		return putJob(tx, cur)
	})
}

// start moves the Task to in-progress before the first vendor call.
func (s *Service) start(ctx context.Context, j *job) error {
	return s.st.Write(workerContext(ctx), func(tx *store.Tx) error {
		if err := fence(ctx, tx); err != nil {
			return err
		}
		cur, err := getJob(tx, j.RequestID)
		if err != nil || cur == nil {
			return err
		}
		cur.Started = true
		if err := s.updateTask(tx, cur.TaskID, func(d *store.Doc) error {
			return setTaskState(d, TaskInProgress, "sent to "+cur.Vendor, "", s.now())
		}); err != nil {
			return err
		}
		j.Started = true
		return putJob(tx, cur)
	})
}

// record applies a vendor answer (or error) to the job in one transaction.
func (s *Service) record(ctx context.Context, seen *job, res Result, callErr error) {
	err := s.st.Write(workerContext(ctx), func(tx *store.Tx) error {
		if err := fence(ctx, tx); err != nil {
			return err
		}
		j, err := getJob(tx, seen.RequestID)
		if err != nil || j == nil {
			return err
		}
		// The call's outcome is known now (an unconfirmed one is kept in
		// Request.Unconfirmed below).
		j.Submitting = time.Time{}
		if j.Seq != seen.Seq || j.State != seen.State {
			// Someone changed the job while the vendor was asked (a code
			// arrived, the check was cancelled): look again at once.
			j.NextAt = s.now().UTC()
			return putJob(tx, j)
		}
		if err := s.apply(tx, j, res, callErr); err != nil {
			return err
		}
		cur, err := getJob(tx, seen.RequestID)
		if err != nil || cur == nil {
			return err // the answer ended the check
		}
		// News came while the vendor was asked (a webhook overtook the
		// answer), about the job or about a ref this answer gave it
		// before the job knew it: ask again now rather than at the next
		// poll.
		early := false
		for _, ref := range cur.Refs {
			k := []byte(cur.Vendor + "\x00" + ref)
			if tx.KV(bEarly).Get(k) != nil {
				early = true
				if err := tx.KV(bEarly).Delete(k); err != nil {
					return err
				}
			}
		}
		if cur.Wake == seen.Wake && !early {
			return nil
		}
		cur.NextAt = s.now().UTC()
		return putJob(tx, cur)
	})
	if err != nil && !errors.Is(err, lease.ErrLost) {
		s.log.Error("eligibility: record vendor answer", "request", seen.RequestID, "err", err)
	}
}

// apply maps one vendor answer through the status table.
func (s *Service) apply(tx *store.Tx, j *job, res Result, callErr error) error {
	now := s.now().UTC()
	if errors.Is(callErr, errNotConfirmed) {
		return s.finish(tx, j, failRow(ErrPayerUnreachable), Result{Ref: j.Ref}, fmt.Sprintf(
			"%s did not confirm within %s whether it received the request (%s); it was not sent again, so that no duplicate (possibly billed) request is made",
			j.Vendor, s.cfg.ConfirmWait.or(10*time.Minute), j.LastError))
	}
	if callErr != nil && IsUnconfirmed(callErr) {
		msg, _ := errs.Public(callErr)
		if j.Req.Unconfirmed.IsZero() {
			j.Req.Unconfirmed = now
		}
		switch s.conns[j.Vendor].(type) {
		case Finder:
			// Retried below as any transient failure: the next step looks
			// for what the call made before anything is created.
		case WebhookConfirmer:
			j.LastError = msg
			j.NextAt = j.Req.Unconfirmed.Add(s.cfg.ConfirmWait.or(10 * time.Minute))
			s.log.Warn("eligibility: the vendor may have received the request; waiting for its webhook rather than sending it again",
				"request", j.RequestID, "vendor", j.Vendor, "err", callErr)
			return putJob(tx, j)
		default:
			s.log.Warn("eligibility: the vendor may have received the request; not sending it again", "request", j.RequestID, "vendor", j.Vendor, "err", callErr)
			return s.finish(tx, j, failRow(ErrPayerUnreachable), Result{Ref: j.Ref}, fmt.Sprintf(
				"%s may have received the request but did not confirm it (%s); it was not sent again, so that no duplicate (possibly billed) request is made", j.Vendor, msg))
		}
	}
	if callErr != nil {
		msg, _ := errs.Public(callErr)
		switch errs.KindOf(callErr) {
		case errs.Transient, errs.Timeout:
			j.Attempts++
			j.LastError = msg
			most := s.cfg.MaxAttempts
			if most <= 0 {
				most = 4
			}
			if j.Attempts < most {
				// The vendor's Retry-After (bounded by
				// vendorhttp.MaxRetryAfter) holds the retry back further.
				delay := max(backoff(s.cfg.RetryBackoff.or(2*time.Second), j.Attempts-1, time.Hour), vendorhttp.RetryAfter(callErr))
				j.NextAt = now.Add(delay)
				s.log.Warn("eligibility: vendor call failed; will retry", "request", j.RequestID, "vendor", j.Vendor, "attempt", j.Attempts, "err", callErr)
				return putJob(tx, j)
			}
			s.log.Warn("eligibility: vendor unreachable; giving up", "request", j.RequestID, "vendor", j.Vendor, "attempts", j.Attempts, "err", callErr)
			return s.finish(tx, j, failRow(ErrPayerUnreachable), Result{Ref: j.Ref},
				fmt.Sprintf("%s could not be reached after %d attempts: %s", j.Vendor, j.Attempts, msg))
		case errs.Unauthorized:
			s.log.Error("eligibility: vendor refused our credentials", "vendor", j.Vendor, "err", callErr)
			return s.finish(tx, j, failRow(ErrVendorCredentials), Result{Ref: j.Ref}, msg)
		case errs.Invalid, errs.Unprocessable, errs.NotFound, errs.Conflict:
			return s.finish(tx, j, failRow(ErrRequestRejected), Result{Ref: j.Ref}, msg)
		default:
			s.log.Error("eligibility: check failed", "request", j.RequestID, "vendor", j.Vendor, "err", callErr)
			return s.finish(tx, j, failRow(ErrInternal), Result{Ref: j.Ref}, "")
		}
	}
	j.Attempts, j.LastError = 0, ""
	j.Req.Unconfirmed = time.Time{} // the vendor answered: what it made is known
	row, ok := s.table[j.Vendor+"\x00"+res.Status]
	if !ok {
		s.log.Error("eligibility: vendor status missing from the status table", "vendor", j.Vendor, "status", res.Status, "request", j.RequestID)
		return s.finish(tx, j, failRow(ErrUnmappedStatus), res, fmt.Sprintf("%s status %q", j.Vendor, res.Status))
	}
	if res.Ref != "" {
		j.Ref = res.Ref
	}
	if err := j.index(tx, j.Ref); err != nil {
		return err
	}
	// The Task changes only when the vendor's status does, not on every
	// poll: each Task version may notify subscribers.
	prevState, prevStatus := j.State, j.Status
	changed := prevStatus != res.Status || prevState != stateWait
	j.Status = res.Status
	if row.Outcome != "" {
		if res.Ref == "" {
			res.Ref = j.Ref
		}
		return s.finish(tx, j, row, res, res.Reason)
	}
	if now.Sub(j.Created) > s.cfg.MaxWait.or(72*time.Hour) {
		return s.finish(tx, j, failRow(ErrNoAnswer), res, fmt.Sprintf("last status %s", res.Status))
	}
	j.Code = nil
	switch row.Task {
	case TaskOnHold:
		if res.Hold == nil {
			return s.finish(tx, j, failRow(ErrInternal), res, "")
		}
		j.State, j.WaitRef = stateHold, res.Hold.Ref
		if err := j.index(tx, j.WaitRef); err != nil {
			return err
		}
		j.NextAt = now.Add(s.cfg.MaxPollInterval.or(10 * time.Minute))
		if prevState != stateHold || prevStatus != res.Status {
			reason := res.Hold.Prompt
			if prevState == stateRelay {
				reason = "The code was not accepted. " + reason
			}
			if err := s.updateTask(tx, j.TaskID, func(d *store.Doc) error {
				if err := setTwoFactorInput(d, res.Hold.Prompt); err != nil {
					return err
				}
				return setTaskState(d, TaskOnHold, reason, statusText(j.Vendor, res), now)
			}); err != nil {
				return err
			}
		}
		if err := putJob(tx, j); err != nil {
			return err
		}
		tx.AfterCommit(func() { s.notify(j.RequestID) })
		return nil
	default: // in progress
		j.State = stateWait
		j.WaitRef = j.Ref
		if res.Hold != nil {
			j.WaitRef = res.Hold.Ref
		}
		if err := j.index(tx, j.WaitRef); err != nil {
			return err
		}
		if j.WaitRef == "" {
			return s.finish(tx, j, failRow(ErrInternal), res, "")
		}
		delay := res.PollAfter
		if delay <= 0 {
			delay = backoff(s.cfg.PollInterval.or(5*time.Second), j.Polls, s.cfg.MaxPollInterval.or(10*time.Minute))
		}
		j.Polls++
		j.NextAt = now.Add(delay)
		if changed {
			if err := s.updateTask(tx, j.TaskID, func(d *store.Doc) error {
				if err := setTwoFactorInput(d, ""); err != nil {
					return err
				}
				return setTaskState(d, TaskInProgress, "", statusText(j.Vendor, res), now)
			}); err != nil {
				return err
			}
		}
		return putJob(tx, j)
	}
}

func statusText(vendor string, res Result) string {
	t := vendor + " status " + res.Status
	if res.Reason != "" {
		t += " (" + res.Reason + ")"
	}
	return t
}

func backoff(base time.Duration, n int, limit time.Duration) time.Duration {
	d := base
	for i := 0; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

func failRow(e *ErrorCode) StatusMapping {
	return StatusMapping{Task: TaskFailed, Outcome: "error", Error: e, Disposition: e.Display}
}

// finish writes the CoverageEligibilityResponse, completes or fails the
// Task, and forgets the job.
func (s *Service) finish(tx *store.Tx, j *job, row StatusMapping, res Result, detail string) error {
	now := s.now().UTC()
	rv, err := tx.Read("CoverageEligibilityRequest", j.RequestID)
	if err != nil && !errs.Is(err, errs.NotFound) && !errs.Is(err, errs.Gone) {
		return err
	}
	if rv != nil && err == nil {
		body, err := responseDoc(j.ResponseID, rv.JSON, j.Vendor, row, res, row.Error, detail, now)
		if err != nil {
			return errs.E("eligibility.finish", errs.Internal, err)
		}
		doc, err := s.fs.ParseResource(body, "CoverageEligibilityResponse")
		if err != nil {
			return errs.E("eligibility.finish", errs.Internal, fmt.Errorf("built an invalid response: %w", err))
		}
		doc.ID = j.ResponseID
		if _, err := s.fs.Put(tx, doc, 0); err != nil {
			return err
		}
	}
	reason := ""
	if row.Error != nil {
		reason = row.Error.Display
		if detail != "" {
			reason += ": " + detail
		}
	}
	if err := s.updateTask(tx, j.TaskID, func(d *store.Doc) error {
		if err := d.Set("input", nil); err != nil {
			return err
		}
		if rv != nil {
			out := []taskParam{{Type: concept{Coding: []coding{{System: TaskSystem, Code: OutputResponse, Display: "Eligibility response"}}},
				ValueReference: &reference{Reference: "CoverageEligibilityResponse/" + j.ResponseID}}}
			if err := d.Set("output", out); err != nil {
				return err
			}
		}
		return setTaskState(d, row.Task, reason, statusText(j.Vendor, res), now)
	}); err != nil {
		return err
	}
	ref := res.Ref
	if ref == "" {
		ref = j.Ref
	}
	if ref != "" && j.Req.MemberID != "" {
		if err := tx.KV(bPriors).Put(priorKey(j.Vendor, j.PayerID, j.Req.MemberID), []byte(ref)); err != nil {
			return err
		}
	}
	if err := deleteJob(tx, j); err != nil {
		return err
	}
	tx.AfterCommit(func() { s.notify(j.RequestID) })
	return nil
}

// updateTask reads a Task, lets change amend it, and writes it through the
// FHIR server (validators and Subscriptions apply). A deleted Task is left
// alone.
func (s *Service) updateTask(tx *store.Tx, id string, change func(*store.Doc) error) error {
	v, err := tx.Read("Task", id)
	if errs.Is(err, errs.NotFound) || errs.Is(err, errs.Gone) {
		return nil
	}
	if err != nil {
		return err
	}
	doc, err := s.fs.ParseResource(v.JSON, "Task")
	if err != nil {
		return err
	}
	if err := change(doc); err != nil {
		return err
	}
	_, err = s.fs.Put(tx, doc, v.VersionID)
	return err
}

// setTaskState sets status, statusReason, businessStatus and lastModified.
// An empty reason or business text removes the element.
func setTaskState(d *store.Doc, status, reason, business string, now time.Time) error {
	if err := d.Set("status", status); err != nil {
		return err
	}
	var sr, bs any
	if reason != "" {
		sr = concept{Text: reason}
	}
	if business != "" {
		bs = concept{Text: business}
	}
	if err := d.Set("statusReason", sr); err != nil {
		return err
	}
	if business != "" || status == TaskCompleted || status == TaskFailed {
		if err := d.Set("businessStatus", bs); err != nil {
			return err
		}
	}
	return d.Set("lastModified", now.UTC().Format(time.RFC3339))
}

// setTwoFactorInput puts the 2fa-code input (value asked for, absent) on
// the Task with prompt as its text, or removes it when prompt is empty.
func setTwoFactorInput(d *store.Doc, prompt string) error {
	var keep []any
	for _, in := range arr(d.Map["input"]) {
		if !hasCoding(obj(obj(in)["type"]), TaskSystem, InputTwoFactorCode) {
			keep = append(keep, in)
		}
	}
	if prompt != "" {
		p := taskParam{Type: concept{Coding: []coding{{System: TaskSystem, Code: InputTwoFactorCode, Display: "Payer portal 2FA code"}}, Text: prompt},
			ValueStringExt: askedUnknown}
		b, err := json.Marshal(p)
		if err != nil {
			return err
		}
		m, err := decodeMap(b)
		if err != nil {
			return err
		}
		keep = append(keep, m)
	}
	if len(keep) == 0 {
		return d.Set("input", nil)
	}
	return d.Set("input", keep)
}

// waitFor returns a channel closed when the check of reqID ends or needs
// input. Register before the check can end.
func (s *Service) waitFor(reqID string) (<-chan struct{}, func()) {
	ch := make(chan struct{})
	s.mu.Lock()
	s.waiters[reqID] = append(s.waiters[reqID], ch)
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		list := s.waiters[reqID]
		for i, c := range list {
			if c == ch {
				s.waiters[reqID] = append(list[:i:i], list[i+1:]...)
				break
			}
		}
		if len(s.waiters[reqID]) == 0 {
			delete(s.waiters, reqID)
		}
	}
}

func (s *Service) notify(reqID string) {
	s.mu.Lock()
	list := s.waiters[reqID]
	delete(s.waiters, reqID)
	s.mu.Unlock()
	for _, ch := range list {
		close(ch)
	}
}

// deliveryMemory is how long webhook delivery ids are remembered to
// recognise a repeated delivery; vendors retry for a day or two.
const deliveryMemory = 7 * 24 * time.Hour

// pruneDeliveries forgets delivery ids, and the news of webhooks about refs
// no job came to know, older than deliveryMemory.
func (s *Service) pruneDeliveries(ctx context.Context) {
	cutoff := s.now().Add(-deliveryMemory)
	old := map[string][][]byte{}
	if err := s.st.View(ctx, func(tx *store.Tx) error {
		for _, b := range []string{bDeliveries, bEarly} {
			if err := tx.KV(b).Scan(nil, func(k, v []byte) (bool, error) {
				if t, err := time.Parse(time.RFC3339, string(v)); err != nil || t.Before(cutoff) {
					old[b] = append(old[b], k)
				}
				return true, nil
			}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil || len(old) == 0 {
		return
	}
	err := s.st.Write(ctx, func(tx *store.Tx) error {
		for b, keys := range old {
			for _, k := range keys {
				if err := tx.KV(b).Delete(k); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil && ctx.Err() == nil {
		s.log.Warn("eligibility: prune webhook deliveries", "err", err)
	}
}
