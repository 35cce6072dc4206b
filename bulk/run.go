package bulk

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/fhir/fhirjson"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/lease"
	"github.com/p2pserver/p2pserver/mdm"
)

// An export runs in slices. Each slice reads up to Config.Slice resources
// of one type in one short read transaction (from the checkpoint on),
// appends them to the type's current file, syncs it, and commits the new
// checkpoint (cursor, file size and count) in one write. A restart
// truncates the file to the size of the last checkpoint and goes on from
// its cursor: nothing is written twice and nothing is lost, and what is
// held in memory is one slice, whatever the size of the export.

// exportSlice runs one slice of export job j; more is true while work is
// left.
func (e *Exporter) exportSlice(ctx context.Context, j *Job) (more bool, err error) {
	if j.Cursor.Step == 0 {
		return true, e.prepare(ctx, j)
	}
	spec := j.Export
	if j.Cursor.Type >= len(spec.Types) {
		return false, e.finish(ctx, j)
	}
	typ := spec.Types[j.Cursor.Type]
	cur := currentFile(j, typ, e.cfg.FileResources)
	budget := int64(e.cfg.Slice)
	if left := e.cfg.FileResources - cur.Count; left < budget {
		budget = left
	}
	var buf bytes.Buffer
	next := j.Cursor
	var n int64
	err = e.st.View(ctx, func(tx *store.Tx) error {
		r, err := e.newReader(tx, j)
		if err != nil {
			return err
		}
		members := memberList{tx: tx, job: j.ID, n: j.Members}
		switch {
		case spec.Level == "system":
			n, next, err = r.system(typ, next, budget, &buf)
		case typ == "Provenance":
			n, next, err = r.provenance(members, next, budget, &buf)
		default:
			n, next, err = r.compartments(typ, members, next, budget, &buf)
		}
		return err
	})
	if err != nil {
		return false, err
	}
	if n > 0 {
		if err := e.appendFile(j.ID, cur, buf.Bytes()); err != nil {
			return false, err
		}
		cur.Count += n
		cur.Size += int64(buf.Len())
	}
	return true, e.checkpoint(ctx, j.ID, func(k *Job) {
		k.State = StateRunning
		k.Cursor = next
		k.Written += n
		if n > 0 {
			if i := slices.IndexFunc(k.Files, func(f File) bool { return f.Name == cur.Name }); i >= 0 {
				k.Files[i] = cur
			} else {
				k.Files = append(k.Files, cur)
			}
		}
	})
}

// currentFile is the file the next resources of typ go to: the last one
// of that type while it has room, else a new one.
func currentFile(j *Job, typ string, max int64) File {
	n := 0
	for _, f := range j.Files {
		if f.Type == typ {
			n++
			if f.Count < max && f.Name == lastOf(j.Files, typ).Name {
				return f
			}
		}
	}
	return File{Type: typ, Name: fmt.Sprintf("%s-%d.ndjson", typ, n+1)}
}

func lastOf(files []File, typ string) File {
	for i := len(files) - 1; i >= 0; i-- {
		if files[i].Type == typ {
			return files[i]
		}
	}
	return File{}
}

// appendFile writes data at the checkpointed end of file f (cutting off
// whatever a slice that never checkpointed left after it) and syncs it.
func (e *Exporter) appendFile(job string, f File, data []byte) error {
	if l := e.heldLease(job); l == nil || !l.Valid() {
		// Another process may have taken the job over and be writing
		// this file: not one byte without the lease.
		return lease.ErrLost
	}
	dir := e.jobDir(job)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	fh, err := os.OpenFile(filepath.Join(dir, f.Name), os.O_WRONLY|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	if err := fh.Truncate(f.Size); err != nil {
		fh.Close()
		return err
	}
	if _, err := fh.WriteAt(data, f.Size); err != nil {
		fh.Close()
		return err
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		return err
	}
	return fh.Close()
}

// checkpoint applies change to job id's record and commits it, unless the
// job was cancelled meanwhile (its record is gone: the files written for
// it are removed again).
func (e *Exporter) checkpoint(ctx context.Context, id string, change func(*Job)) error {
	gone := false
	err := e.st.Write(ctx, func(tx *store.Tx) error {
		if err := e.checkLease(tx, id); err != nil {
			return err
		}
		k, err := getJob(tx, id)
		if err != nil {
			return err
		}
		if k == nil || !k.active() {
			gone = true
			return nil
		}
		change(k)
		if !k.active() {
			// The job's last write hands its lease back.
			if l := e.heldLease(id); l != nil {
				if err := l.ReleaseTx(tx); err != nil {
					return err
				}
			}
		}
		return putJob(tx, k)
	})
	if gone {
		_ = os.RemoveAll(e.jobDir(id))
		return context.Canceled
	}
	return err
}

// prepare resolves the members of a patient or group export and, for a
// payer-to-payer export, checks each one's consent again (PDex STU 2.1:
// "The Data Export operation SHALL check the consent status for each
// member at the time of execution"): a member whose consent no longer
// holds is left out and named in the error file.
func (e *Exporter) prepare(ctx context.Context, j *Job) error {
	spec := j.Export
	var members []string
	var outcomes bytes.Buffer
	var excluded int64
	err := e.st.View(ctx, func(tx *store.Tx) error {
		switch spec.Level {
		case "patient":
			members = tx.AllIDs("Patient")
		case "group":
			v, err := tx.Read("Group", spec.GroupID)
			if err != nil {
				return err
			}
			members = groupMembers(v.JSON, e.now())
		}
		if !spec.PayerToPayer {
			return nil
		}
		kept := members[:0]
		for _, m := range members {
			ok, reason, err := mdm.ConsentHolds(tx, m, j.Requester, e.now())
			if err != nil {
				return err
			}
			if ok {
				kept = append(kept, m)
				continue
			}
			excluded++
			line, _ := json.Marshal(map[string]any{"resourceType": "OperationOutcome", "issue": []any{map[string]any{
				"severity": "error", "code": "suppressed", "expression": []string{"Patient/" + m},
				"diagnostics": "Patient/" + m + ": not exported: " + reason,
			}}})
			outcomes.Write(line)
			outcomes.WriteByte('\n')
		}
		members = kept
		return nil
	})
	if err != nil {
		return fmt.Errorf("bulk: prepare export: %w", err)
	}
	errFile := File{Type: "OperationOutcome", Name: "OperationOutcome-errors.ndjson", Count: excluded, Size: int64(outcomes.Len())}
	if excluded > 0 {
		if err := e.appendFile(j.ID, File{Name: errFile.Name}, outcomes.Bytes()); err != nil {
			return err
		}
	}
	if err := e.st.Write(ctx, func(tx *store.Tx) error {
		if spec.Level == "system" {
			return nil
		}
		return putMembers(tx, j.ID, members)
	}); err != nil {
		return err
	}
	return e.checkpoint(ctx, j.ID, func(k *Job) {
		k.State = StateRunning
		k.Cursor = Cursor{Step: 1}
		k.Members = len(members)
		if excluded > 0 {
			k.Errors = []File{errFile}
		}
	})
}

// groupMembers returns the Patient ids of a Group's current members
// (not inactive, within their period), sorted, once each.
func groupMembers(raw []byte, now time.Time) []string {
	var g struct {
		Member []struct {
			Entity struct {
				Reference string `json:"reference"`
			} `json:"entity"`
			Inactive bool `json:"inactive"`
			Period   struct {
				End string `json:"end"`
			} `json:"period"`
		} `json:"member"`
	}
	if json.Unmarshal(raw, &g) != nil {
		return nil
	}
	var out []string
	for _, m := range g.Member {
		if m.Inactive {
			continue
		}
		if m.Period.End != "" {
			if _, hi, err := search.DateRange(m.Period.End); err == nil && now.UnixMilli() > hi {
				continue
			}
		}
		ref := search.NormalizeReference(m.Entity.Reference, "")
		if id, ok := strings.CutPrefix(ref, "Patient/"); ok && id != "" && !strings.Contains(id, "/") && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// finish completes job j.
func (e *Exporter) finish(ctx context.Context, j *Job) error {
	err := e.checkpoint(ctx, j.ID, func(k *Job) {
		k.State = StateComplete
		k.Finished = e.now()
		k.Expires = k.Finished.Add(e.cfg.Retention)
	})
	if err == nil {
		e.log.Info("bulk: export complete", "job", j.ID, "resources", j.Written, "files", len(j.Files), "members", j.Members)
	}
	return err
}

// reader reads the resources of one slice of an export.
type reader struct {
	e       *Exporter
	tx      *store.Tx
	j       *Job
	spec    *ExportSpec
	filters map[string][]*search.Query
	now     time.Time
	// policies are the consent policies of the members seen in this slice.
	policies map[string]*mdm.Policy
	// sees is the access policy's answer for the job's client.
	sees func(*store.Version) bool
}

func (e *Exporter) newReader(tx *store.Tx, j *Job) (*reader, error) {
	r := &reader{e: e, tx: tx, j: j, spec: j.Export, now: j.TransactionTime, policies: map[string]*mdm.Policy{}}
	r.sees = e.srv.Policy().Seer(tx, j.principal())
	for typ, qs := range j.Export.TypeFilters {
		for _, raw := range qs {
			vals, err := url.ParseQuery(raw)
			if err != nil {
				return nil, err
			}
			q, err := e.st.Registry().Parse(typ, vals, search.Options{})
			if err != nil {
				return nil, err
			}
			// A chain reaches only what the client may read, as in its
			// own search.
			e.srv.Policy().Confine(tx, j.principal(), q)
			if r.filters == nil {
				r.filters = map[string][]*search.Query{}
			}
			r.filters[typ] = append(r.filters[typ], q)
		}
	}
	return r, nil
}

// system reads the resources of typ after the cursor, in id order.
func (r *reader) system(typ string, cur Cursor, budget int64, buf *bytes.Buffer) (int64, Cursor, error) {
	var n int64
	var err error
	done := true
	r.tx.ScanCurrent(typ, cur.After, func(id string, lu time.Time, raw []byte) bool {
		if n >= budget {
			done = false
			return false
		}
		cur.After = strings.Clone(id)
		var ok bool
		if ok, err = r.emit(typ, id, lu, raw, nil, buf); err != nil {
			return false
		}
		if ok {
			n++
		}
		return true
	})
	if err != nil {
		return 0, cur, err
	}
	if done {
		cur = Cursor{Step: cur.Step, Type: cur.Type + 1}
	}
	return n, cur, nil
}

// compartments reads the resources of typ in the members' records (their
// compartments and those of the Patients linked to them), member by
// member from the cursor.
func (r *reader) compartments(typ string, members memberList, cur Cursor, budget int64, buf *bytes.Buffer) (int64, Cursor, error) {
	var n int64
	for cur.Member < members.len() {
		m := members.at(cur.Member)
		pol, err := r.policy(m)
		if err != nil {
			return 0, cur, err
		}
		for _, id := range r.record(typ, m) {
			if id <= cur.After {
				continue
			}
			if n >= budget {
				return n, cur, nil
			}
			v, err := r.tx.Read(typ, id)
			if err != nil {
				continue // deleted meanwhile
			}
			cur.After = id
			ok, err := r.emit(typ, id, v.LastUpdated, v.JSON, pol, buf)
			if err != nil {
				return 0, cur, err
			}
			if ok {
				n++
			}
		}
		cur.Member++
		cur.After = ""
	}
	return n, Cursor{Step: cur.Step, Type: cur.Type + 1}, nil
}

// record returns the ids of typ in member's record, sorted.
func (r *reader) record(typ, member string) []string {
	ids := r.tx.CompartmentIDs(typ, member)
	for _, l := range r.e.srv.Policy().Linked(r.tx, member) {
		if typ == "Patient" {
			if _, err := r.tx.Read("Patient", l); err == nil {
				ids = append(ids, l)
			}
			continue
		}
		ids = append(ids, r.tx.CompartmentIDs(typ, l)...)
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// policy is what member's consents withhold.
func (r *reader) policy(member string) (*mdm.Policy, error) {
	if p, ok := r.policies[member]; ok {
		return p, nil
	}
	p, err := mdm.ConsentPolicy(r.tx, member, r.now)
	if err != nil {
		return nil, err
	}
	r.policies[member] = p
	return p, nil
}

// provenance writes, member by member, the Provenance of what the other
// files of a patient or group export hold: each Provenance that targets
// a resource sent, its targets cut to the resources sent.
func (r *reader) provenance(members memberList, cur Cursor, budget int64, buf *bytes.Buffer) (int64, Cursor, error) {
	var n int64
	for cur.Member < members.len() {
		m := members.at(cur.Member)
		pol, err := r.policy(m)
		if err != nil {
			return 0, cur, err
		}
		sent := map[string]bool{}
		var provs []string
		for _, typ := range r.spec.Types {
			if typ == "Provenance" {
				continue
			}
			for _, id := range r.record(typ, m) {
				v, err := r.tx.Read(typ, id)
				if err != nil {
					continue
				}
				if ok, err := r.keep(typ, id, v.LastUpdated, v.JSON, pol, nil); err != nil || !ok {
					continue
				}
				sent[typ+"/"+id] = true
				provs = append(provs, r.tx.Referencing("Provenance", "target", typ, id)...)
			}
		}
		slices.Sort(provs)
		provs = slices.Compact(provs)
		for _, id := range provs {
			if id <= cur.After {
				continue
			}
			if n >= budget {
				return n, cur, nil
			}
			cur.After = id
			v, err := r.tx.Read("Provenance", id)
			if err != nil {
				continue
			}
			// The Provenance as stored, its target list cut to what was sent.
			kept := 0
			line, err := fhirjson.EditObject(v.JSON, func(name string, val []byte) ([]byte, error) {
				if name != "target" || firstByte(val) != '[' {
					return val, nil
				}
				return fhirjson.EditArray(val, func(_ int, t []byte) ([]byte, error) {
					var tm map[string]any
					_ = json.Unmarshal(t, &tm)
					ref, _ := tm["reference"].(string)
					if !sent[versionless(search.NormalizeReference(ref, r.e.srv.BaseURL()))] {
						return nil, nil
					}
					kept++
					return t, nil
				})
			})
			if err != nil {
				return 0, cur, fmt.Errorf("bulk: Provenance/%s: %w", id, err)
			}
			if kept == 0 {
				continue
			}
			writeLine(buf, line)
			n++
		}
		cur.Member++
		cur.After = ""
	}
	return n, Cursor{Step: cur.Step, Type: cur.Type + 1}, nil
}

// versionless drops the /_history/n of a reference.
func versionless(ref string) string {
	if i := strings.Index(ref, "/_history/"); i >= 0 {
		return ref[:i]
	}
	return ref
}

// emit writes one resource to buf if it passes the export's filters;
// raw may be the database's memory (it is copied).
func (r *reader) emit(typ, id string, lu time.Time, raw []byte, pol *mdm.Policy, buf *bytes.Buffer) (bool, error) {
	return r.keep(typ, id, lu, raw, pol, buf)
}

// keep applies the export's filters to one resource: _since and _until
// (meta.lastUpdated), _typeFilter (any of the type's queries), the
// member's consent, and the payer-to-payer scope. With buf set, the
// resource as sent is appended to it as one line.
func (r *reader) keep(typ, id string, lu time.Time, raw []byte, pol *mdm.Policy, buf *bytes.Buffer) (bool, error) {
	spec := r.spec
	if !r.sees(&store.Version{Type: typ, ID: id, JSON: raw, LastUpdated: lu}) {
		return false, nil
	}
	if !spec.Since.IsZero() && lu.Before(spec.Since) {
		return false, nil
	}
	if !spec.Until.IsZero() && !lu.Before(spec.Until) {
		return false, nil
	}
	if qs := r.filters[typ]; len(qs) > 0 {
		matched := false
		for _, q := range qs {
			ok, err := r.tx.Match(q, id)
			if err != nil {
				return false, err
			}
			if ok {
				matched = true
				break
			}
		}
		if !matched {
			return false, nil
		}
	}
	decodeNeeded := spec.PayerToPayer || (pol != nil && !pol.Empty())
	if !decodeNeeded {
		if buf != nil {
			writeLine(buf, raw)
		}
		return true, nil
	}
	var res map[string]any
	if err := json.Unmarshal(raw, &res); err != nil {
		return false, fmt.Errorf("bulk: %s/%s: %w", typ, id, err)
	}
	if pol != nil && pol.Withholds(typ, id, res) {
		return false, nil
	}
	if spec.PayerToPayer && !p2pKeep(typ, res, spec, r.now, lu) {
		return false, nil
	}
	if buf != nil {
		// The decoded form only decides; what is sent is the stored JSON,
		// less what the payer-to-payer scope removes.
		line := raw
		if spec.PayerToPayer {
			var err error
			if line, err = p2pStrip(typ, raw); err != nil {
				return false, fmt.Errorf("bulk: %s/%s: %w", typ, id, err)
			}
		}
		writeLine(buf, line)
	}
	return true, nil
}

// writeLine appends a stored resource as one NDJSON line.
func writeLine(buf *bytes.Buffer, raw []byte) {
	if bytes.IndexByte(raw, '\n') < 0 {
		buf.Write(raw)
	} else {
		_ = json.Compact(buf, raw)
	}
	buf.WriteByte('\n')
}
