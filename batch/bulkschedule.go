package batch

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/httpapi"
	"github.com/p2pserver/p2pserver/oidcservers"
)

// Concurrent coverage (PDex STU 2.1 "Member covered by two payers"): while
// a member is covered by the old payer too, the new payer asks again for
// what changed, at least quarterly (CMS-0057-F). Each definition of an old
// payer from which members were pulled has a schedule: every Every (91
// days unless an admin changes it) a bulk exchange job of the members
// last pulled from there whose coverage there still holds (its
// CoverageToMatch active and its period not ended) and whose Consent is
// still in its period, with _since the last transactionTime of their
// pulls. The schedule is made when a first pull completes.

// DefaultScheduleEvery is the default interval of a definition's schedule:
// quarterly.
const DefaultScheduleEvery = 91 * 24 * time.Hour

// schedule is a definition's bulk schedule as stored.
type schedule struct {
	Enabled bool          `json:"enabled"`
	Every   time.Duration `json:"every"`
	NextRun time.Time     `json:"nextRun"`
	LastRun time.Time     `json:"lastRun,omitzero"`
	LastJob int64         `json:"lastJob,omitempty"`
	// Note says why the last run started no job, if it did not.
	Note string `json:"note,omitempty"`
}

func getSchedule(tx *store.Tx, server int64) (*schedule, bool) {
	raw := tx.KV(bulkScheduleBucket).Get(idKey(server))
	if raw == nil {
		return &schedule{Enabled: true, Every: DefaultScheduleEvery}, false
	}
	var s schedule
	if json.Unmarshal(raw, &s) != nil {
		return &schedule{Enabled: true, Every: DefaultScheduleEvery}, false
	}
	return &s, true
}

func putSchedule(tx *store.Tx, server int64, s *schedule) error {
	raw, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return tx.KV(bulkScheduleBucket).Put(idKey(server), raw)
}

// scheduleAfterPull makes the definition's schedule when its first pull
// completes, its next run one interval later.
func scheduleAfterPull(tx *store.Tx, server int64, now time.Time) error {
	s, ok := getSchedule(tx, server)
	if ok {
		return nil
	}
	s.NextRun = now.Add(s.Every)
	return putSchedule(tx, server, s)
}

// BulkSchedule is a definition's bulk schedule as the API shows it.
type BulkSchedule struct {
	Enabled bool `json:"enabled"`
	// Every is the interval: a number of days ("91d") or a Go duration
	// ("36h").
	Every string `json:"every"`
	// NextRun is when the next delta pull starts (null before a first
	// pull has completed); LastRun and LastBulkJobID the last one.
	NextRun       *string `json:"nextRun"`
	LastRun       *string `json:"lastRun"`
	LastBulkJobID *int64  `json:"lastBulkJobId"`
	// Members is how many members were pulled from this old payer, and
	// Covered how many of them a delta pull would ask for now.
	Members int    `json:"members"`
	Covered int    `json:"covered"`
	Note    string `json:"note,omitempty"`
}

func formatEvery(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

func parseEvery(s string) (time.Duration, bool) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days, err := strconv.Atoi(n)
		return time.Duration(days) * 24 * time.Hour, err == nil && days > 0 && days <= 3660
	}
	d, err := time.ParseDuration(s)
	return d, err == nil && d >= time.Second
}

func (s *schedule) view(tx *store.Tx, server int64, now time.Time, known bool) BulkSchedule {
	v := BulkSchedule{Enabled: s.Enabled, Every: formatEvery(s.Every), LastRun: stamp(s.LastRun), Note: s.Note}
	if known {
		v.NextRun = stamp(s.NextRun)
	}
	if s.LastJob != 0 {
		id := s.LastJob
		v.LastBulkJobID = &id
	}
	_ = eachPull(tx, server, func(patient string, p *bulkPull) (bool, error) {
		v.Members++
		if stillCovered(tx, patient, p, now) == "" {
			v.Covered++
		}
		return true, nil
	})
	return v
}

// stillCovered says why a member last pulled with p is no longer asked
// for, "" when they are: our Patient is gone, their coverage at the old
// payer is no longer active or its period has ended, or their Consent's
// period has ended.
func stillCovered(tx *store.Tx, patient string, p *bulkPull, now time.Time) string {
	if _, err := tx.Read("Patient", patient); err != nil {
		return "the member is no longer on this server"
	}
	var cov struct {
		Status string `json:"status"`
		Period struct {
			End string `json:"end"`
		} `json:"period"`
	}
	if json.Unmarshal(p.CoverageToMatch, &cov) != nil || (cov.Status != "" && cov.Status != "active") {
		return "the coverage at the old payer is not active"
	}
	if ended(cov.Period.End, now) {
		return "the coverage at the old payer has ended"
	}
	var c struct {
		Provision struct {
			Period struct {
				End string `json:"end"`
			} `json:"period"`
		} `json:"provision"`
	}
	if json.Unmarshal(p.Consent, &c) == nil && ended(c.Provision.Period.End, now) {
		return "the member's consent has ended"
	}
	return ""
}

// ended reports whether a FHIR date or dateTime end lies before now (a
// date ends at the end of its day).
func ended(end string, now time.Time) bool {
	if end == "" {
		return false
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02", "2006-01", "2006"} {
		if t, err := time.Parse(layout, end); err == nil {
			if layout != time.RFC3339Nano {
				t = t.AddDate(0, 0, 1)
			}
			return !t.After(now)
		}
	}
	return false
}

// scheduleLoop starts the delta pulls that are due, every
// Config.ScheduleCheck and when an admin changes a schedule.
func (r *Runner) scheduleLoop() {
	defer r.wg.Done()
	t := time.NewTicker(r.cfg.ScheduleCheck)
	defer t.Stop()
	for {
		r.runSchedules()
		select {
		case <-r.ctx.Done():
			return
		case <-t.C:
		case <-r.scheduleNow:
		}
	}
}

// runSchedules starts a bulk exchange job for each definition whose
// schedule is due. The check and the job are one transaction, so of
// several processes sharing the database one starts it.
func (r *Runner) runSchedules() {
	now := r.cfg.Now().UTC()
	var due []int64
	_ = r.st.View(r.ctx, func(tx *store.Tx) error {
		return tx.KV(bulkScheduleBucket).Scan(nil, func(k, v []byte) (bool, error) {
			var s schedule
			if len(k) == 8 && json.Unmarshal(v, &s) == nil && s.Enabled && !s.NextRun.After(now) {
				due = append(due, int64(binaryUint64(k)))
			}
			return true, nil
		})
	})
	for _, server := range due {
		if err := r.runSchedule(server, now); err != nil && r.ctx.Err() == nil {
			r.log.Error("batch: bulk schedule", "server", server, "err", err)
		}
	}
}

func (r *Runner) runSchedule(server int64, now time.Time) error {
	srv, err := r.defs.Get(r.ctx, server)
	if err != nil && !errs.Is(err, errs.NotFound) {
		return err
	}
	gone := err != nil
	var started *record
	err = r.st.Write(r.ctx, func(tx *store.Tx) error {
		started = nil
		s, _ := getSchedule(tx, server)
		if !s.Enabled || s.NextRun.After(now) {
			return nil // changed, or run by another process meanwhile
		}
		s.LastRun, s.NextRun, s.Note = now, now.Add(s.Every), ""
		if gone {
			s.Enabled, s.Note = false, "the OIDC server definition no longer exists"
			return putSchedule(tx, server, s)
		}
		active, err := activeJobs(tx)
		if err != nil {
			return err
		}
		for id, sv := range active {
			if sv != server {
				continue
			}
			if other, err := getJob(tx, id); err == nil && other.Kind == KindBulk {
				s.Note = fmt.Sprintf("bulk job %d was still running; the next run is one interval later", id)
				return putSchedule(tx, server, s)
			}
		}
		var members []*bulkMember
		if err := eachPull(tx, server, func(patient string, p *bulkPull) (bool, error) {
			if stillCovered(tx, patient, p, now) != "" || len(members) == MaxBulkMembers {
				return true, nil
			}
			m := &bulkMember{PatientID: patient, CoverageToMatch: p.CoverageToMatch, CoverageToLink: p.CoverageToLink,
				Consent: p.Consent, Outcome: OutcomePending}
			if p.TaskID != "" && checkTask(tx, p.TaskID, patient) == "" {
				m.TaskID = p.TaskID
			}
			members = append(members, m)
			return true, nil
		}); err != nil {
			return err
		}
		if len(members) == 0 {
			s.Note = "no member pulled from this old payer is still covered there"
			return putSchedule(tx, server, s)
		}
		rec := &record{ServerID: server, Kind: KindBulk, Status: Starting, SourceBase: normalizeBase(srv.FHIREndpoint), SourceName: srv.Name,
			SourceOrganizationID: srv.OrganizationID, Bulk: &bulkState{Phase: PhaseMatching, Scheduled: true, Members: len(members)}}
		if err := r.insertBulk(tx, rec, members, now); err != nil {
			return err
		}
		s.LastJob = rec.ID
		started = rec
		return putSchedule(tx, server, s)
	})
	if err == nil && started != nil {
		r.log.Info("batch: bulk schedule: delta pull started", "server", server, "job", started.ID, "members", started.Bulk.Members)
	}
	return err
}

func (a *API) getSchedule(w http.ResponseWriter, r *http.Request) {
	pid, err := oidcservers.PIDParam(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if _, err := a.runner.defs.Get(r.Context(), pid); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	var out BulkSchedule
	if err := a.runner.st.View(r.Context(), func(tx *store.Tx) error {
		s, known := getSchedule(tx, pid)
		out = s.view(tx, pid, a.runner.cfg.Now().UTC(), known)
		return nil
	}); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

// ScheduleRequest is the body of PUT .../bulk_schedule: each field given
// changes the schedule. NextRun sets the next delta pull (now or earlier:
// at once).
type ScheduleRequest struct {
	Enabled *bool   `json:"enabled,omitempty"`
	Every   *string `json:"every,omitempty"`
	NextRun *string `json:"nextRun,omitempty"`
}

func (a *API) putSchedule(w http.ResponseWriter, r *http.Request) {
	if role, _ := httpapi.RoleFromContext(r.Context()); role != "admin" {
		httpapi.WriteError(w, httpapi.Errorf(http.StatusForbidden, httpapi.CodeForbidden, "only an admin may change a bulk schedule"))
		return
	}
	pid, err := oidcservers.PIDParam(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	var in ScheduleRequest
	fields, err := httpapi.DecodeJSONFields(r, a.maxBody, &in)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if _, err := a.runner.defs.Get(r.Context(), pid); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	var every time.Duration
	if in.Every != nil {
		var ok bool
		if every, ok = parseEvery(*in.Every); !ok {
			fields["every"] = `must be a number of days ("91d", at most 3660) or a duration ("36h", at least 1s)`
		}
	}
	var next time.Time
	if in.NextRun != nil {
		if next, err = time.Parse(time.RFC3339Nano, *in.NextRun); err != nil {
			fields["nextRun"] = "must be an instant such as 2027-01-01T00:00:00Z"
		}
	}
	if len(fields) > 0 {
		httpapi.WriteError(w, httpapi.Invalid(fields))
		return
	}
	now := a.runner.cfg.Now().UTC()
	var out BulkSchedule
	err = a.runner.st.Write(r.Context(), func(tx *store.Tx) error {
		s, known := getSchedule(tx, pid)
		if in.Enabled != nil {
			s.Enabled = *in.Enabled
		}
		if in.Every != nil {
			s.Every = every
			if known && !s.LastRun.IsZero() {
				s.NextRun = s.LastRun.Add(every)
			}
		}
		if in.NextRun != nil {
			s.NextRun, known = next.UTC(), true
		}
		if !known && s.NextRun.IsZero() {
			s.NextRun = now.Add(s.Every)
		}
		out = s.view(tx, pid, now, true)
		return putSchedule(tx, pid, s)
	})
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	a.log.Info("batch: bulk schedule changed", "server", pid, "enabled", out.Enabled, "every", out.Every)
	select {
	case a.runner.scheduleNow <- struct{}{}:
	default:
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}
