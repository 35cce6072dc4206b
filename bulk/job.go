package bulk

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/store"
)

// The buckets the jobs live in.
const (
	jobsBucket    = "bulk_jobs"
	membersBucket = "bulk_job_members"
)

// Kinds of job.
const (
	KindExport = "export"
	KindMatch  = "bulk-member-match"
)

// Job states. A job is accepted, then running, then one of the three
// ends; a cancelled job is deleted with its files at once, so no record
// of it stays.
const (
	StateAccepted = "accepted"
	StateRunning  = "running"
	StateComplete = "complete"
	StateFailed   = "failed"
)

// Job is the durable record of a Bulk Data export or a $bulk-member-match:
// what was asked, by whom, and how far it went. It is rewritten at each
// checkpoint, in the same database as the resources.
type Job struct {
	ID   string `json:"id"`
	Kind string `json:"kind"`
	// Owner names the client that started the job (see Owner): only it
	// may poll, download or cancel.
	Owner string `json:"owner"`
	// Requester is the subject of the token that started the job, as
	// $member-match records it on the Consents it stores: a
	// payer-to-payer export checks that the member's consent names it.
	Requester string `json:"requester,omitempty"`
	// RequesterOrg is the organizationId the requesting backend client
	// was registered with, when known: the recipient a member's Consent
	// must name.
	RequesterOrg string `json:"requesterOrg,omitempty"`
	// Request is the kick-off URL, as the manifest repeats it.
	Request         string    `json:"request"`
	TransactionTime time.Time `json:"transactionTime"`
	State           string    `json:"state"`
	// Failure is the reason a failed job gives its client.
	Failure string `json:"failure,omitempty"`
	// Finished is when the job completed or failed; Expires when it and
	// its files are deleted.
	Finished time.Time `json:"finished,omitzero"`
	Expires  time.Time `json:"expires,omitzero"`

	Export *ExportSpec `json:"export,omitempty"`
	// Cursor is where the job stands: it resumes there after a restart.
	Cursor Cursor `json:"cursor"`
	// Files are the output files written so far, in order; Errors the
	// error files (OperationOutcome).
	Files  []File `json:"files,omitempty"`
	Errors []File `json:"errors,omitempty"`
	// Written counts the resources written to the output files.
	Written int64 `json:"written"`
	// Members is how many members (Patients) the export covers, or the
	// $bulk-member-match request has.
	Members int `json:"members"`
	// Match counts the outcomes of a $bulk-member-match so far.
	Match *MatchCounts `json:"match,omitempty"`
	// Results is the file of a $bulk-member-match's member outcomes so far.
	Results File `json:"results,omitzero"`
}

// ExportSpec is what an export was asked for, from the kick-off
// parameters.
type ExportSpec struct {
	// Level is "system", "patient" or "group".
	Level   string `json:"level"`
	GroupID string `json:"groupId,omitempty"`
	// Types are the resource types exported, in order.
	Types []string `json:"types"`
	// Since and Until bound meta.lastUpdated (Since after the
	// payer-to-payer floor is applied).
	Since time.Time `json:"since,omitzero"`
	Until time.Time `json:"until,omitzero"`
	// TypeFilters are the _typeFilter queries by type ("code=x&date=ge2020").
	TypeFilters map[string][]string `json:"typeFilters,omitempty"`
	// PayerToPayer applies the PDex payer-to-payer scope (see scope.go).
	PayerToPayer bool `json:"payerToPayer,omitempty"`
	// ServiceFloor is the oldest date of service sent (payer-to-payer).
	ServiceFloor time.Time `json:"serviceFloor,omitzero"`
	// Restricted says the job acts for a restricted principal (a client
	// token): what it writes is what the access policy lets that client
	// read, the types in Readable (its scopes' r or s at kick-off) and
	// none of another client's resources (authz.OwnerTagSystem).
	Restricted bool     `json:"restricted,omitempty"`
	Readable   []string `json:"readable,omitempty"`
}

// principal is the client an export acts for, as the access policy sees
// it: its owner and the types it could read at kick-off; nil for an
// unrestricted job (an admin's, or one on an open server).
func (j *Job) principal() *authz.Principal {
	if j.Export == nil || !j.Export.Restricted {
		return nil
	}
	readable := j.Export.Readable
	return &authz.Principal{Subject: j.Requester, Client: j.Owner, Grant: func(typ string, need authz.Perm) bool {
		return need&^(authz.Read|authz.Search) == 0 && slices.Contains(readable, typ)
	}}
}

// Cursor is the checkpoint of a job. For an export: the type being
// written (an index in Types, len(Types) for the Provenance pass of a
// payer-to-payer export), the member (an index in the member list, for
// patient and group exports) and the last id written of that type (and
// member). Step counts the phases a job went through (0: members not yet
// resolved).
type Cursor struct {
	Step   int    `json:"step"`
	Type   int    `json:"type"`
	Member int    `json:"member"`
	After  string `json:"after,omitempty"`
}

// File is one output file: its resource type, its name in the job's
// folder, how many resources and bytes it holds as of the checkpoint.
type File struct {
	Type  string `json:"type"`
	Name  string `json:"name"`
	Count int64  `json:"count"`
	Size  int64  `json:"size"`
}

// MatchCounts are the outcomes of a $bulk-member-match.
type MatchCounts struct {
	Matched            int    `json:"matched"`
	NotMatched         int    `json:"notMatched"`
	ConsentConstrained int    `json:"consentConstrained"`
	Groups             Groups `json:"groups"`
}

// Groups are the ids of the Groups a $bulk-member-match wrote.
type Groups struct {
	Matched            string `json:"matched,omitempty"`
	NotMatched         string `json:"notMatched,omitempty"`
	ConsentConstrained string `json:"consentConstrained,omitempty"`
}

func (j *Job) active() bool { return j.State == StateAccepted || j.State == StateRunning }

func getJob(tx *store.Tx, id string) (*Job, error) {
	raw := tx.KV(jobsBucket).Get([]byte(id))
	if raw == nil {
		return nil, nil
	}
	var j Job
	if err := json.Unmarshal(raw, &j); err != nil {
		return nil, fmt.Errorf("bulk: job %s: %w", id, err)
	}
	return &j, nil
}

func putJob(tx *store.Tx, j *Job) error {
	raw, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return tx.KV(jobsBucket).Put([]byte(j.ID), raw)
}

func deleteJob(tx *store.Tx, id string) error {
	if err := tx.KV(jobsBucket).Delete([]byte(id)); err != nil {
		return err
	}
	return deleteMembers(tx, id)
}

// allJobs returns every job record.
func allJobs(tx *store.Tx) ([]*Job, error) {
	var out []*Job
	err := tx.KV(jobsBucket).Scan(nil, func(_, v []byte) (bool, error) {
		var j Job
		if err := json.Unmarshal(v, &j); err != nil {
			return false, err
		}
		out = append(out, &j)
		return true, nil
	})
	return out, err
}

// The member list of a patient or group export is resolved once, when it
// starts running, and kept beside the job, one key per member, so that a
// slice reads only the members it works on.
func memberKey(job string, i int) []byte {
	return binary.BigEndian.AppendUint64(append([]byte(job), 0), uint64(i))
}

func putMembers(tx *store.Tx, id string, members []string) error {
	kv := tx.KV(membersBucket)
	for i, m := range members {
		if err := kv.Put(memberKey(id, i), []byte(m)); err != nil {
			return err
		}
	}
	return nil
}

// memberList is the member list of a job, read in a transaction.
type memberList struct {
	tx  *store.Tx
	job string
	n   int
}

func (l memberList) len() int { return l.n }

func (l memberList) at(i int) string { return string(l.tx.KV(membersBucket).Get(memberKey(l.job, i))) }

// deleteMembers removes the member list of job id.
func deleteMembers(tx *store.Tx, id string) error {
	kv := tx.KV(membersBucket)
	prefix := append([]byte(id), 0)
	var keys [][]byte
	if err := kv.Scan(prefix, func(k, _ []byte) (bool, error) {
		if !bytes.HasPrefix(k, prefix) {
			return false, nil
		}
		keys = append(keys, k)
		return true, nil
	}); err != nil {
		return err
	}
	for _, k := range keys {
		if err := kv.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
