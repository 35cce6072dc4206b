package batch

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// A bulk exchange job is the PDex STU 2.1 payer-to-payer exchange of many
// members at once, this server requesting: Group/$bulk-member-match at
// the source payer, then Group/{matched}/$davinci-data-export, then the
// download and ingestion of its files. It is a job like the paged member
// jobs: the same record (Kind "bulk"), statuses, buckets, workers and
// ingest rules; what is its own is in record.Bulk and one key per member.

// KindBulk is the record.Kind of a bulk exchange job.
const KindBulk = "bulk"

// BulkJobConfigurationName is the jobConfigurationName of a bulk exchange.
const BulkJobConfigurationName = "p2pBulkExchange"

// The phases of a bulk exchange job.
const (
	PhaseMatching    = "matching"
	PhaseExporting   = "exporting"
	PhaseDownloading = "downloading"
	PhaseDone        = "done"
)

// The outcomes of one member.
const (
	OutcomePending            = "pending"
	OutcomeMatched            = "matched"
	OutcomeNotMatched         = "notMatched"
	OutcomeConsentConstrained = "consentConstrained"
)

// bulkState is the checkpoint of a bulk exchange job: where it stands in
// each phase, so that a restart goes on there. A status URL is kept as
// soon as the source answers a kick-off, and used again after a restart
// for as long as the source knows it; a file is resumed at the line after
// the last one committed.
type bulkState struct {
	Phase   string `json:"phase"`
	GroupID string `json:"groupId,omitempty"`
	// Since is the _since asked for; ExportSince the _since sent.
	Since       time.Time `json:"since,omitzero"`
	ExportSince time.Time `json:"exportSince,omitzero"`
	// Scheduled is set on the jobs the definition's schedule started.
	Scheduled bool `json:"scheduled,omitempty"`

	Members            int `json:"members"`
	Matched            int `json:"matched"`
	NotMatched         int `json:"notMatched"`
	ConsentConstrained int `json:"consentConstrained"`

	MatchStatus string `json:"matchStatus,omitempty"`
	// MatchAsked and ExportAsked are when the source was first found
	// still working on the request (bounded by Config.BulkWaitFor).
	MatchAsked   time.Time `json:"matchAsked,omitzero"`
	ExportAsked  time.Time `json:"exportAsked,omitzero"`
	MatchedGroup string    `json:"matchedGroup,omitempty"`

	ExportStatus string `json:"exportStatus,omitempty"`
	// ExportKickOff is when the export was asked for, by this server's
	// clock: the latest transactionTime kept.
	ExportKickOff   time.Time  `json:"exportKickOff,omitzero"`
	TransactionTime time.Time  `json:"transactionTime,omitzero"`
	RequiresToken   bool       `json:"requiresAccessToken,omitempty"`
	Files           []bulkFile `json:"files,omitempty"`
	// File is the index in Files being downloaded, Line the number of its
	// lines already ingested.
	File      int   `json:"file"`
	Line      int64 `json:"line"`
	FilesDone int   `json:"filesDone"`
	Chunks    int   `json:"chunks"`
	// Rejected counts the lines of the files left out (bulkRun.refuse);
	// Errors the OperationOutcomes of the error files.
	Rejected   int      `json:"rejected,omitempty"`
	Errors     int      `json:"errors,omitempty"`
	ErrorNotes []string `json:"errorNotes,omitempty"`
	// DownSince is when the source payer stopped answering (zero while it
	// answers): past Config.BulkRetryFor the job fails.
	DownSince time.Time `json:"downSince,omitzero"`
}

// bulkFile is one file of the export's manifest.
type bulkFile struct {
	Type  string `json:"type"`
	URL   string `json:"url"`
	Count int64  `json:"count,omitempty"`
	Error bool   `json:"error,omitempty"`
}

// maxErrorNotes is how many error file diagnostics a job keeps.
const maxErrorNotes = 10

// bulkMember is one member of a bulk exchange job, kept under its own key.
type bulkMember struct {
	PatientID       string          `json:"patientId"`
	TaskID          string          `json:"taskId,omitempty"`
	CoverageToMatch json.RawMessage `json:"coverageToMatch,omitempty"`
	CoverageToLink  json.RawMessage `json:"coverageToLink,omitempty"`
	Consent         json.RawMessage `json:"consent,omitempty"`

	Outcome string `json:"outcome"`
	// SourcePatient is the member's Patient id at the source payer, as its
	// matched Group names it.
	SourcePatient string `json:"sourcePatient,omitempty"`
	// MemberIdentifier is system|value of the member identifier the source
	// payer's Patient carries, added to our member.
	MemberIdentifier string `json:"memberIdentifier,omitempty"`
	LinkedPatient    string `json:"linkedPatient,omitempty"`
	Note             string `json:"note,omitempty"`
	Resources        int    `json:"resourcesWritten"`
}

// Buckets of the bulk exchange jobs, beside batch_jobs.
const (
	// bulkMembersBucket: job id, member index (4 bytes) -> bulkMember JSON.
	bulkMembersBucket = "batch_bulk_members"
	// bulkPullsBucket: server id, our Patient id -> bulkPull JSON: the
	// last complete pull of a member from a source payer.
	bulkPullsBucket = "batch_bulk_pulls"
	// bulkScheduleBucket: server id -> Schedule JSON.
	bulkScheduleBucket = "batch_bulk_schedule"
)

// MaxBulkMembers is the most members one bulk exchange job takes: their
// $bulk-member-match request stays well under a server's body limit.
const MaxBulkMembers = 5000

func memberKeyOf(job int64, i int) []byte {
	return binary.BigEndian.AppendUint32(idKey(job), uint32(i))
}

func getMember(tx *store.Tx, job int64, i int) (*bulkMember, error) {
	raw := tx.KV(bulkMembersBucket).Get(memberKeyOf(job, i))
	if raw == nil {
		return nil, fmt.Errorf("batch: bulk job %d has no member %d", job, i)
	}
	var m bulkMember
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("batch: bulk job %d member %d: %w", job, i, err)
	}
	return &m, nil
}

func putMember(tx *store.Tx, job int64, i int, m *bulkMember) error {
	raw, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return tx.KV(bulkMembersBucket).Put(memberKeyOf(job, i), raw)
}

// eachMember calls f with the members of job from index from on, in
// order, until f returns false.
func eachMember(tx *store.Tx, job int64, from int, f func(i int, m *bulkMember) (bool, error)) error {
	prefix := idKey(job)
	return tx.KV(bulkMembersBucket).Scan(memberKeyOf(job, from), func(k, v []byte) (bool, error) {
		if len(k) != 12 || !bytes.HasPrefix(k, prefix) {
			return false, nil
		}
		var m bulkMember
		if err := json.Unmarshal(v, &m); err != nil {
			return false, err
		}
		return f(int(binary.BigEndian.Uint32(k[8:])), &m)
	})
}

// bulkPull is a member's last complete pull from a source payer: the
// export's transactionTime is the _since of the next (PDex STU 2.1
// concurrent coverage), and the coverage it was matched with is what the
// schedule checks to see if the member is still covered there.
type bulkPull struct {
	TransactionTime time.Time       `json:"transactionTime"`
	Job             int64           `json:"job"`
	CoverageToMatch json.RawMessage `json:"coverageToMatch,omitempty"`
	CoverageToLink  json.RawMessage `json:"coverageToLink,omitempty"`
	Consent         json.RawMessage `json:"consent,omitempty"`
	TaskID          string          `json:"taskId,omitempty"`
}

func pullKey(server int64, patient string) []byte {
	return append(idKey(server), patient...)
}

func getPull(tx *store.Tx, server int64, patient string) (*bulkPull, bool) {
	raw := tx.KV(bulkPullsBucket).Get(pullKey(server, patient))
	if raw == nil {
		return nil, false
	}
	var p bulkPull
	if json.Unmarshal(raw, &p) != nil {
		return nil, false
	}
	return &p, true
}

func putPull(tx *store.Tx, server int64, patient string, p *bulkPull) error {
	raw, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return tx.KV(bulkPullsBucket).Put(pullKey(server, patient), raw)
}

// eachPull calls f with every member last pulled from server.
func eachPull(tx *store.Tx, server int64, f func(patient string, p *bulkPull) (bool, error)) error {
	prefix := idKey(server)
	return tx.KV(bulkPullsBucket).Scan(prefix, func(k, v []byte) (bool, error) {
		if !bytes.HasPrefix(k, prefix) {
			return false, nil
		}
		var p bulkPull
		if err := json.Unmarshal(v, &p); err != nil {
			return false, err
		}
		return f(string(k[8:]), &p)
	})
}
