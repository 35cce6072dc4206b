package eligibility

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/lease"
)

const maxOperationBody = 1 << 20

// submit serves POST /fhir/CoverageEligibilityRequest/$submit. The body is
// a CoverageEligibilityRequest (or a Parameters whose "resource" parameter
// is one). The request is created exactly as a POST would create it, then
// the call waits (up to SubmitWait, or less with "Prefer: wait=N"; not at
// all with "Prefer: respond-async") for the vendor's answer:
//
//   - 200 with the CoverageEligibilityResponse when the vendor answered
//     (outcome complete, or error with what to fix);
//   - 202 with the Task when the check is still under way or waits for
//     input (a 2FA code); Content-Location names the Task;
//   - 503 with an OperationOutcome when the payer could not be reached or
//     the vendor refused this server (the response and the failed Task are
//     recorded too);
//   - 422 naming every missing field, before any vendor call, as for POST.
func (s *Service) submit(w http.ResponseWriter, r *http.Request) {
	const op = "eligibility.submit"
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxOperationBody))
	if err != nil {
		fhir.WriteError(w, r, errs.E(op, errs.TooLarge, "the request body is too large"))
		return
	}
	doc, err := s.fs.ParseResource(body, "")
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	if doc.Type == "Parameters" {
		doc, err = s.resourceParam(doc.Map)
		if err != nil {
			fhir.WriteError(w, r, err)
			return
		}
	}
	if doc.Type != "CoverageEligibilityRequest" {
		fhir.WriteError(w, r, errs.E(op, errs.Invalid, "$submit takes a CoverageEligibilityRequest"))
		return
	}
	if doc.Map["status"] != "active" {
		fhir.WriteError(w, r, errs.E(op, errs.Invalid, "$submit needs a CoverageEligibilityRequest with status active",
			errs.Issue{Code: "value", Path: "CoverageEligibilityRequest.status", Message: "must be active"}))
		return
	}
	// $submit creates the request, as a POST would: the same letter (c).
	if err := s.fs.Policy().Need(fhir.AccessFrom(r.Context()), "CoverageEligibilityRequest", authz.Create); err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	doc.ID = fhir.NewID()
	if err := doc.Set("id", doc.ID); err != nil {
		fhir.WriteError(w, r, errs.E(op, errs.Internal, err))
		return
	}
	done, cancel := s.waitFor(doc.ID)
	defer cancel()
	var created *store.Version
	err = s.st.Write(context.WithoutCancel(r.Context()), func(tx *store.Tx) error {
		var err error
		created, err = s.fs.Put(tx, doc, 0)
		return err
	})
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	if wait := submitWait(r, s.cfg.SubmitWait.or(20*time.Second)); wait > 0 {
		// The check may be worked by another process on the database,
		// whose end does not reach done here: its record is looked at too.
		t := time.NewTimer(wait)
		look := time.NewTicker(250 * time.Millisecond)
	waiting:
		for {
			select {
			case <-done:
				break waiting
			case <-t.C:
				break waiting
			case <-r.Context().Done():
				break waiting
			case <-look.C:
				if s.settled(r.Context(), created.ID) {
					break waiting
				}
			}
		}
		t.Stop()
		look.Stop()
	}
	s.answer(w, r, created.ID)
}

// settled reports whether the check of reqID has ended or waits for
// input, as the database says.
func (s *Service) settled(ctx context.Context, reqID string) bool {
	var j *job
	err := s.st.View(ctx, func(tx *store.Tx) (err error) {
		j, err = getJob(tx, reqID)
		return err
	})
	return err == nil && (j == nil || j.State == stateHold)
}

// submitWait reads Prefer: respond-async and wait=N (RFC 7240).
func submitWait(r *http.Request, limit time.Duration) time.Duration {
	for _, h := range r.Header.Values("Prefer") {
		for _, part := range strings.Split(h, ",") {
			for _, p := range strings.Split(part, ";") {
				k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
				switch strings.ToLower(k) {
				case "respond-async":
					return 0
				case "wait":
					if n, err := strconv.Atoi(strings.Trim(v, `"`)); err == nil && n >= 0 {
						return min(time.Duration(n)*time.Second, limit)
					}
				}
			}
		}
	}
	return limit
}

// infrastructure errors: the vendor did not answer about the member at
// all, so $submit answers with an OperationOutcome.
var infrastructure = map[string]bool{
	ErrPayerUnreachable.Code: true, ErrVendorCredentials.Code: true, ErrNoAnswer.Code: true,
	ErrInternal.Code: true, ErrUnmappedStatus.Code: true,
}

// answer writes the state of the check of request reqID.
func (s *Service) answer(w http.ResponseWriter, r *http.Request, reqID string) {
	var resp, task *store.Version
	err := s.st.View(r.Context(), func(tx *store.Tx) error {
		c, err := getCheck(tx, reqID)
		if err != nil {
			return err
		}
		j, err := getJob(tx, reqID)
		if err != nil {
			return err
		}
		if j == nil {
			resp, err = tx.Read("CoverageEligibilityResponse", c.ResponseID)
			if err == nil {
				return nil
			}
			if !errs.Is(err, errs.NotFound) {
				return err
			}
			// Cancelled, or its request deleted: the Task tells.
		}
		task, err = tx.Read("Task", c.TaskID)
		return err
	})
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	base := s.fs.BaseURL()
	if resp == nil {
		w.Header().Set("Content-Location", base+"/Task/"+task.ID)
		writeFHIR(w, http.StatusAccepted, task.JSON)
		return
	}
	m, _ := decodeMap(resp.JSON)
	for _, e := range arr(m["error"]) {
		for _, c := range arr(obj(obj(e)["code"])["coding"]) {
			cm := obj(c)
			if str(cm["system"]) == ErrorSystem && infrastructure[str(cm["code"])] {
				text := str(obj(obj(e)["code"])["text"])
				oo := fhir.OperationOutcome{ResourceType: "OperationOutcome", Issue: []fhir.OOIssue{
					{Severity: "error", Code: "transient", Diagnostics: text},
					{Severity: "information", Code: "informational",
						Diagnostics: fmt.Sprintf("recorded as CoverageEligibilityResponse/%s; the Task that tracked the check has failed", resp.ID)},
				}}
				b, _ := json.Marshal(oo)
				w.Header().Set("Content-Location", base+"/CoverageEligibilityResponse/"+resp.ID)
				writeFHIR(w, http.StatusServiceUnavailable, b)
				return
			}
		}
	}
	w.Header().Set("Content-Location", fmt.Sprintf("%s/CoverageEligibilityResponse/%s/_history/%d", base, resp.ID, resp.VersionID))
	w.Header().Set("ETag", fmt.Sprintf(`W/"%d"`, resp.VersionID))
	writeFHIR(w, http.StatusOK, resp.JSON)
}

func writeFHIR(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/fhir+json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// resourceParam takes the resource of a Parameters' "resource" parameter.
func (s *Service) resourceParam(m map[string]any) (*store.Doc, error) {
	for _, p := range arr(m["parameter"]) {
		pm := obj(p)
		if str(pm["name"]) == "resource" {
			if res := obj(pm["resource"]); res != nil {
				b, err := json.Marshal(res)
				if err != nil {
					return nil, errs.E("eligibility.submit", errs.Invalid, "the resource parameter could not be read")
				}
				return s.fs.ParseResource(b, "")
			}
		}
	}
	return nil, errs.E("eligibility.submit", errs.Invalid, "the Parameters have no \"resource\" parameter with a CoverageEligibilityRequest")
}

// confirm2FA serves POST /fhir/Task/{id}/$confirm-2fa with a Parameters
// body holding "code" (valueString): it relays the code to the vendor at
// once (confirmDatasource2FaCode for tuuthfairy) and answers with the
// updated Task (200), or 422 when the portal did not accept the code (the
// Task stays on-hold), 409 when the check is not waiting for a code.
func (s *Service) confirm2FA(w http.ResponseWriter, r *http.Request) {
	const op = "eligibility.confirm-2fa"
	taskID := chi.URLParam(r, "id")
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
	if err != nil {
		fhir.WriteError(w, r, errs.E(op, errs.TooLarge, "the request body is too large"))
		return
	}
	params, err := s.fs.ParseResource(body, "Parameters")
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	code := ""
	for _, p := range arr(params.Map["parameter"]) {
		if pm := obj(p); str(pm["name"]) == "code" {
			code = strings.TrimSpace(str(pm["valueString"]))
		}
	}
	if code == "" {
		fhir.WriteError(w, r, errs.E(op, errs.Invalid, "the Parameters need a \"code\" parameter (valueString) with the 2FA code",
			errs.Issue{Code: "required", Path: "Parameters.parameter.where(name='code').valueString", Message: "the 2FA code"}))
		return
	}
	// Relaying the code changes the Task: the update letter (u), on a Task
	// the requester may see (one it may not answers as one that does not
	// exist).
	a := fhir.AccessFrom(r.Context())
	if err := s.fs.Policy().Need(a, "Task", authz.Update); err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	var j *job
	err = s.st.View(r.Context(), func(tx *store.Tx) error {
		if _, err := s.fs.Policy().Current(tx, a, "Task", taskID); err != nil {
			return err
		}
		reqID := tx.KV(bTasks).Get([]byte(taskID))
		if reqID == nil {
			return errs.E(op, errs.NotFound, fmt.Sprintf("Task/%s does not track an eligibility check", taskID))
		}
		var err error
		j, err = getJob(tx, string(reqID))
		return err
	})
	if err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	if j == nil || j.State != stateHold {
		fhir.WriteError(w, r, errs.E(op, errs.Conflict, "this eligibility check is not waiting for a 2FA code"))
		return
	}
	tf, ok := s.conns[j.Vendor].(TwoFactor)
	if !ok {
		fhir.WriteError(w, r, errs.E(op, errs.Conflict, j.Vendor+" does not take 2FA codes"))
		return
	}
	// No worker, here or in another process, may poll the job while the
	// code is relayed.
	l := s.claimWait(r.Context(), j.RequestID)
	if l == nil {
		fhir.WriteError(w, r, errs.E(op, errs.Conflict, "the check is busy; try again"))
		return
	}
	defer func() {
		_ = l.Release(r.Context())
		s.release(j.RequestID)
		s.poke()
	}()
	ctx := context.WithValue(r.Context(), leaseKey{}, l)
	res, callErr := tf.Confirm2FA(ctx, j.WaitRef, code)
	if callErr != nil {
		msg, _ := errs.Public(callErr)
		kind := errs.KindOf(callErr)
		if kind == errs.Invalid || kind == errs.NotFound {
			kind = errs.Unprocessable
		}
		fhir.WriteError(w, r, errs.E(op, kind, "the 2FA code could not be relayed: "+msg, callErr))
		return
	}
	row, known := s.table[j.Vendor+"\x00"+res.Status]
	s.record(ctx, j, res, nil)
	if known && row.Task == TaskOnHold {
		fhir.WriteError(w, r, errs.E(op, errs.Unprocessable,
			fmt.Sprintf("the payer portal did not accept the code (connection status %s); the Task stays on hold", res.Status)))
		return
	}
	var tv *store.Version
	if err := s.st.View(r.Context(), func(tx *store.Tx) error {
		var err error
		tv, err = tx.Read("Task", taskID)
		return err
	}); err != nil {
		fhir.WriteError(w, r, err)
		return
	}
	writeFHIR(w, http.StatusOK, tv.JSON)
}

// claimWait claims a job and takes its lease, waiting while a worker
// (here or in another process) holds it; nil when it waited in vain.
func (s *Service) claimWait(ctx context.Context, id string) *lease.Lease {
	for i := 0; i < 600; i++ {
		if s.claim(id) {
			l, err := s.leases.Acquire(ctx, checkLease(id))
			if l != nil {
				return l
			}
			s.release(id)
			if err != nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}
