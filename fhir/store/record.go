package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"github.com/p2pserver/p2pserver/fhir/fhirjson"
	"time"
)

// Version is one stored version of a resource.
type Version struct {
	Type        string
	ID          string
	VersionID   int64
	LastUpdated time.Time
	Deleted     bool
	// JSON is the resource with id and meta as stored; empty when Deleted.
	JSON []byte
}

const (
	flagDeleted = 1
	// flagPacked marks a record whose JSON is compressed (packJSON); the
	// records written before compression hold their JSON as it is.
	flagPacked = 2
)

// A record is how a version sits in a bucket: flags, version, lastUpdated
// (microseconds since the epoch), then the JSON, compressed.
func encodeRecord(v *Version) []byte {
	b := make([]byte, 17, 17+len(v.JSON)/2)
	if v.Deleted {
		b[0] = flagDeleted
	}
	binary.BigEndian.PutUint64(b[1:], uint64(v.VersionID))
	binary.BigEndian.PutUint64(b[9:], uint64(v.LastUpdated.UnixMicro()))
	if len(v.JSON) > 0 {
		b[0] |= flagPacked
		b = packJSON(b, v.JSON)
	}
	return b
}

// decodeRecord copies what it needs: bbolt memory is valid only in its tx.
func decodeRecord(typ, id string, b []byte, withJSON bool) (*Version, error) {
	if len(b) < 17 {
		return nil, fmt.Errorf("store: corrupt record %s/%s", typ, id)
	}
	v := &Version{
		Type:        typ,
		ID:          id,
		Deleted:     b[0]&flagDeleted != 0,
		VersionID:   int64(binary.BigEndian.Uint64(b[1:])),
		LastUpdated: time.UnixMicro(int64(binary.BigEndian.Uint64(b[9:]))).UTC(),
	}
	if withJSON && len(b) > 17 {
		var err error
		if v.JSON, err = recordJSON(b, nil); err != nil {
			return nil, fmt.Errorf("store: %s/%s: %w", typ, id, err)
		}
		if b[0]&flagPacked == 0 {
			v.JSON = bytes.Clone(v.JSON)
		}
	}
	return v, nil
}

// recordJSON returns the JSON of record b: b's own memory when it is not
// compressed, else the JSON uncompressed into scratch (appended to
// scratch[:0]).
func recordJSON(b, scratch []byte) ([]byte, error) {
	if b[0]&flagPacked == 0 {
		return b[17:], nil
	}
	return unpackJSON(scratch[:0], b[17:])
}

func recordDeleted(b []byte) bool { return len(b) > 0 && b[0]&flagDeleted != 0 }

func recordVersion(b []byte) int64 { return int64(binary.BigEndian.Uint64(b[1:])) }

func historyKey(id string, version int64) []byte {
	k := make([]byte, len(id)+9)
	copy(k, id)
	binary.BigEndian.PutUint64(k[len(id)+1:], uint64(version))
	return k
}

// changeValue is what the change log holds per write: type, id, version.
func changeValue(typ, id string, version int64) []byte {
	b := make([]byte, 0, len(typ)+len(id)+10)
	b = append(b, typ...)
	b = append(b, 0)
	b = append(b, id...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint64(b, uint64(version))
}

func parseChange(b []byte) (typ, id string, version int64, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return
	}
	j := bytes.IndexByte(b[i+1:], 0)
	if j < 0 || len(b) != i+1+j+1+8 {
		return
	}
	return string(b[:i]), string(b[i+1 : i+1+j]), int64(binary.BigEndian.Uint64(b[i+j+2:])), true
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// stamp returns the resource JSON with resourceType, id and meta first,
// meta.versionId and meta.lastUpdated set (other meta elements kept), and
// every other member as it was, in its order, compacted.
func stamp(data []byte, typ, id string, version int64, lastUpdated time.Time) ([]byte, error) {
	ms, err := fhirjson.Members(data)
	if err != nil {
		return nil, err
	}
	quote := func(s string) json.RawMessage { b, _ := json.Marshal(s); return b }
	meta := []fhirjson.Member{
		{Key: "versionId", Raw: quote(fmt.Sprint(version))},
		{Key: "lastUpdated", Raw: quote(lastUpdated.UTC().Format("2006-01-02T15:04:05.000000Z07:00"))},
	}
	out := []fhirjson.Member{{Key: "resourceType", Raw: quote(typ)}, {Key: "id", Raw: quote(id)}, {Key: "meta"}}
	for _, m := range ms {
		switch m.Key {
		case "resourceType", "id":
		case "meta":
			old, err := fhirjson.Members(m.Raw)
			if err != nil {
				return nil, fmt.Errorf("meta: %w", err)
			}
			for _, mm := range old {
				if mm.Key != "versionId" && mm.Key != "lastUpdated" {
					meta = append(meta, mm)
				}
			}
		default:
			out = append(out, m)
		}
	}
	if out[2].Raw, err = fhirjson.Object(meta); err != nil {
		return nil, err
	}
	return fhirjson.Object(out)
}
