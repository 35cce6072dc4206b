package batch

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// Status is a job's batchStatus, as in the P2P module guide.
type Status string

// The statuses a job goes through: STARTING until a worker takes it,
// STARTED while pages are pulled, then COMPLETED or FAILED; a stop request
// makes it STOPPING until the worker lets go, then STOPPED.
const (
	Starting  Status = "STARTING"
	Started   Status = "STARTED"
	Completed Status = "COMPLETED"
	Failed    Status = "FAILED"
	Stopping  Status = "STOPPING"
	Stopped   Status = "STOPPED"
)

// Active reports whether a job in status s is still to be worked on.
func (s Status) Active() bool { return s == Starting || s == Started || s == Stopping }

// JobConfigurationName is the jobConfigurationName of every P2P exchange job.
const JobConfigurationName = "p2pExchange"

// record is a job as stored in the "batch_jobs" bucket. Everything a
// restarted server needs to resume is here: the request, the member's
// tokens (sealed with the server's secret key), and the checkpoint.
type record struct {
	ID int64 `json:"id"`
	// Kind is "" for a member's paged job, KindBulk for a bulk exchange,
	// whose own state is in Bulk.
	Kind     string     `json:"kind,omitempty"`
	Bulk     *bulkState `json:"bulk,omitempty"`
	ServerID int64      `json:"serverId"`
	Status   Status     `json:"status"`
	Created  time.Time  `json:"created"`
	Started  time.Time  `json:"started,omitzero"`
	Ended    time.Time  `json:"ended,omitzero"`
	Updated  time.Time  `json:"updated"`
	TaskID   string     `json:"taskId,omitempty"`

	// SourceBase is the definition's fhirEndpoint when the job was made: the
	// base every request is resolved against and the origin every link must
	// share, and part of every ingested resource's identity.
	SourceBase           string `json:"sourceBase"`
	SourceName           string `json:"sourceName"`
	SourceOrganizationID string `json:"sourceOrganizationId,omitempty"`
	SourcePatientID      string `json:"sourcePatientId"`
	BundleRequest        string `json:"fhirBundleRequest"`
	TargetPatientID      string `json:"targetPatientId"`
	TargetOrganizationID string `json:"targetOrganizationId"`

	// The member's tokens, sealed; dropped when the job ends.
	SealedAccess  []byte    `json:"sealedAccess,omitempty"`
	SealedRefresh []byte    `json:"sealedRefresh,omitempty"`
	AccessExpiry  time.Time `json:"accessExpiry,omitzero"`

	// Checkpoint. MemberDone is set once the member's source Patient has
	// been read for MDM (or when MDM is off). NextURL is the next page to
	// fetch; it starts as the resolved fhirBundleRequest.
	MemberDone bool   `json:"memberDone"`
	FirstURL   string `json:"firstUrl"`
	NextURL    string `json:"nextUrl"`

	progress
}

// progress is what a job has done, reported by the status API.
type progress struct {
	Pages          int            `json:"pagesFetched"`
	Resources      map[string]int `json:"resourcesWritten"`
	Versions       int            `json:"versionsWritten"`
	Unchanged      int            `json:"resourcesUnchanged"`
	Skipped        map[string]int `json:"resourcesSkipped,omitempty"`
	Relinked       int            `json:"referencesRelinked"`
	ToSource       int            `json:"referencesToSource"`
	ProvenanceIDs  []string       `json:"provenanceIds"`
	Retries        int            `json:"retries"`
	TokenRefreshes int            `json:"tokenRefreshes"`
	Restarts       int            `json:"restarts"`
	LinkedPatient  string         `json:"linkedPatient,omitempty"`
	MemberIdent    string         `json:"memberIdentifier,omitempty"`
	MDMNote        string         `json:"mdmNote,omitempty"`
	TaskNote       string         `json:"taskNote,omitempty"`
	Reason         string         `json:"failureReason,omitempty"`
	// Final: the job failed for a cause only the member can remove, and
	// its add-payer Task failed with it.
	Final bool `json:"final,omitempty"`
}

func (r *record) total() int {
	n := 0
	for _, c := range r.Resources {
		n += c
	}
	return n
}

// Buckets of the job records, in the store's database.
const (
	jobsBucket     = "batch_jobs"           // id -> record JSON
	byServerBucket = "batch_jobs_by_server" // server id, ^job id -> "" (newest first)
	activeBucket   = "batch_jobs_active"    // job id -> server id, while Active
)

func idKey(id int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(id)) }

// serverKey sorts a server's jobs newest first: the job id is inverted.
func serverKey(server, job int64) []byte {
	k := binary.BigEndian.AppendUint64(nil, uint64(server))
	return binary.BigEndian.AppendUint64(k, ^uint64(job))
}

// errNoJob is returned by getJob for an unknown id.
var errNoJob = fmt.Errorf("batch: no such job")

func getJob(tx *store.Tx, id int64) (*record, error) {
	raw := tx.KV(jobsBucket).Get(idKey(id))
	if raw == nil {
		return nil, errNoJob
	}
	var rec record
	if err := json.Unmarshal(raw, &rec); err != nil {
		return nil, fmt.Errorf("batch: job %d: decode: %w", id, err)
	}
	return &rec, nil
}

// putJob stores rec, stamping Updated, and keeps the server and active
// indexes in step with it.
func putJob(tx *store.Tx, rec *record, now time.Time) error {
	rec.Updated = now
	raw, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("batch: job %d: encode: %w", rec.ID, err)
	}
	if err := tx.KV(jobsBucket).Put(idKey(rec.ID), raw); err != nil {
		return err
	}
	if err := tx.KV(byServerBucket).Put(serverKey(rec.ServerID, rec.ID), nil); err != nil {
		return err
	}
	if rec.Status.Active() {
		return tx.KV(activeBucket).Put(idKey(rec.ID), idKey(rec.ServerID))
	}
	return tx.KV(activeBucket).Delete(idKey(rec.ID))
}

// activeJobs returns the ids of the jobs still to be worked on, with their
// servers.
func activeJobs(tx *store.Tx) (map[int64]int64, error) {
	out := map[int64]int64{}
	err := tx.KV(activeBucket).Scan(nil, func(k, v []byte) (bool, error) {
		if len(k) == 8 && len(v) == 8 {
			out[int64(binary.BigEndian.Uint64(k))] = int64(binary.BigEndian.Uint64(v))
		}
		return true, nil
	})
	return out, err
}

func binaryUint64(b []byte) uint64 { return binary.BigEndian.Uint64(b) }

// jobsOf calls fn with each job of source payer pid, newest first, from
// the job before id before (all of them when before is 0), until fn
// returns false or an error.
func jobsOf(tx *store.Tx, pid, before int64, fn func(id int64, rec *record) (bool, error)) error {
	prefix := serverKey(pid, 0)[:8]
	start := prefix
	if before > 0 {
		start = serverKey(pid, before-1)
	}
	return tx.KV(byServerBucket).Scan(start, func(k, _ []byte) (bool, error) {
		if len(k) != 16 || string(k[:8]) != string(prefix) {
			return false, nil
		}
		id := int64(^binaryUint64(k[8:]))
		rec, err := getJob(tx, id)
		if err != nil {
			return false, err
		}
		return fn(id, rec)
	})
}
