package store

import (
	"encoding/binary"
	"time"
)

// HistoryQuery selects versions for a history interaction, newest first.
type HistoryQuery struct {
	Type string // empty for system history
	ID   string // set for instance history (Type must be set)
	// Since keeps versions updated at or after it; At keeps, per resource,
	// the version current at that time (instance history only).
	Since time.Time
	// Before is a paging cursor: only changes strictly older than it (a
	// change sequence, or a version for instance history). Zero: newest.
	Before uint64
	Count  int
}

// HistoryPage is one page of history.
type HistoryPage struct {
	Versions []*Version
	// Next is the cursor for the following page, 0 when this is the last.
	Next uint64
	// Total is the number of versions the query selects, when known
	// cheaply (instance history); -1 otherwise.
	Total int
}

// History returns a page of versions, newest first. Because history only
// grows at its new end, a cursor stays valid while others write.
func (tx *Tx) History(q HistoryQuery) (*HistoryPage, error) {
	if q.Count <= 0 {
		q.Count = 20
	}
	page := &HistoryPage{Total: -1}
	if q.ID != "" {
		return tx.instanceHistory(q, page)
	}
	name := []byte("C")
	if q.Type != "" {
		name = bucketName("C", q.Type)
	}
	b := tx.btx.Bucket(name)
	if b == nil {
		return page, nil
	}
	c := b.Cursor()
	var k, v []byte
	if q.Before == 0 {
		k, v = c.Last()
	} else if k, _ = c.Seek(seqKey(q.Before)); k == nil {
		k, v = c.Last()
	} else {
		k, v = c.Prev()
	}
	for ; k != nil; k, v = c.Prev() {
		typ, id, vid, ok := parseChange(v, q.Type)
		if !ok {
			continue
		}
		if len(page.Versions) == q.Count {
			page.Next = binary.BigEndian.Uint64(k) + 1
			break
		}
		ver, err := tx.historyVersion(typ, id, vid)
		if err != nil {
			return nil, err
		}
		if ver == nil {
			continue
		}
		if !q.Since.IsZero() && ver.LastUpdated.Before(q.Since) {
			break
		}
		page.Versions = append(page.Versions, ver)
	}
	// Next is the sequence just above the first change not returned, so
	// that "strictly older than Next" starts with it.
	return page, nil
}

func (tx *Tx) historyVersion(typ, id string, vid int64) (*Version, error) {
	raw := tx.versionRecord(typ, id, vid)
	if raw == nil {
		return nil, nil
	}
	return decodeRecord(typ, id, raw, true)
}

func (tx *Tx) instanceHistory(q HistoryQuery, page *HistoryPage) (*HistoryPage, error) {
	cur, err := tx.current(q.Type, q.ID)
	if err != nil {
		return nil, err
	}
	if cur == nil {
		return page, nil
	}
	page.Total = 0
	start := cur.VersionID
	if q.Before != 0 && int64(q.Before)-1 < start {
		start = int64(q.Before) - 1
	}
	for vid := cur.VersionID; vid >= 1; vid-- {
		ver, err := tx.historyVersion(q.Type, q.ID, vid)
		if err != nil {
			return nil, err
		}
		if ver == nil || (!q.Since.IsZero() && ver.LastUpdated.Before(q.Since)) {
			continue
		}
		page.Total++
		if vid > start {
			continue
		}
		if len(page.Versions) == q.Count {
			if page.Next == 0 {
				page.Next = uint64(vid) + 1
			}
			continue
		}
		page.Versions = append(page.Versions, ver)
	}
	return page, nil
}
