package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/p2pserver/p2pserver/fhir/fhirjson"
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
	// flagHead marks a record whose JSON is stored without its head (see
	// recordHead), which is made again from the record's type, id, version
	// and lastUpdated when it is read.
	flagHead = 4
)

// recordHead is how the stored JSON of a version begins (as stamp writes
// it): resourceType, id, and meta's versionId and lastUpdated. It is part
// of the record format: a record with flagHead is read back with exactly
// these bytes in front, so their form must never change.
func recordHead(dst []byte, typ, id string, version int64, lastUpdated time.Time) []byte {
	dst = append(dst, `{"resourceType":"`...)
	dst = append(dst, typ...)
	dst = append(dst, `","id":"`...)
	dst = append(dst, id...)
	dst = append(dst, `","meta":{"versionId":"`...)
	dst = strconv.AppendInt(dst, version, 10)
	dst = append(dst, `","lastUpdated":"`...)
	dst = appendStamp(dst, lastUpdated)
	return append(dst, '"')
}

// stampLayout is how a version's lastUpdated is written in its JSON.
const stampLayout = "2006-01-02T15:04:05.000000Z07:00"

// appendStamp appends t in stampLayout, in UTC, as t.UTC().AppendFormat
// does, without time's layout interpreter: every read of a stored
// version makes its head again, and formatting the time was most of that.
// Years outside 0-9999 (which stampLayout writes differently) are left to
// AppendFormat.
func appendStamp(dst []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(dst, stampLayout)
	}
	hour, minute, sec := t.Clock()
	digits := func(dst []byte, v, n int) []byte {
		var b [6]byte
		for i := n - 1; i >= 0; i-- {
			b[i] = byte('0' + v%10)
			v /= 10
		}
		return append(dst, b[:n]...)
	}
	dst = digits(dst, year, 4)
	dst = append(dst, '-')
	dst = digits(dst, int(month), 2)
	dst = append(dst, '-')
	dst = digits(dst, day, 2)
	dst = append(dst, 'T')
	dst = digits(dst, hour, 2)
	dst = append(dst, ':')
	dst = digits(dst, minute, 2)
	dst = append(dst, ':')
	dst = digits(dst, sec, 2)
	dst = append(dst, '.')
	dst = digits(dst, t.Nanosecond()/1000, 6)
	return append(dst, 'Z')
}

// recordHeadFixed is the length of a head (recordHead) without its type
// and id, with the longest version number.
const recordHeadFixed = len(`{"resourceType":"","id":"","meta":{"versionId":"","lastUpdated":"2006-01-02T15:04:05.000000Z"`) + 20

// recordFixed is the length of a record's fixed part: flags, version,
// lastUpdated; the JSON follows.
const recordFixed = 17

// A record is how a version sits in a bucket sits in a bucket: flags, version, lastUpdated
// (microseconds since the epoch), then the JSON, compressed, without its
// head when it has the one recordHead gives (it always has when stamp
// made it).
func encodeRecord(v *Version) []byte {
	b := make([]byte, 17, 17+len(v.JSON)/2)
	if v.Deleted {
		b[0] = flagDeleted
	}
	binary.BigEndian.PutUint64(b[1:], uint64(v.VersionID))
	binary.BigEndian.PutUint64(b[9:], uint64(v.LastUpdated.UnixMicro()))
	if len(v.JSON) > 0 {
		body := v.JSON
		var head [160]byte
		if h := recordHead(head[:0], v.Type, v.ID, v.VersionID, v.LastUpdated); bytes.HasPrefix(body, h) {
			body = body[len(h):]
			b[0] |= flagHead
		}
		b[0] |= flagPacked
		b = packJSON(b, body)
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
		if v.JSON, err = recordJSON(typ, id, b, nil); err != nil {
			return nil, fmt.Errorf("store: %s/%s: %w", typ, id, err)
		}
		if b[0]&flagPacked == 0 {
			v.JSON = bytes.Clone(v.JSON)
		}
	}
	return v, nil
}

// recordJSON returns the JSON of record b of typ/id: b's own memory when
// it is not compressed, else the JSON made in scratch (appended to
// scratch[:0]).
func recordJSON(typ, id string, b, scratch []byte) ([]byte, error) {
	if b[0]&flagPacked == 0 {
		return b[17:], nil
	}
	// One allocation for the head and the JSON: the frame says how long
	// the JSON is.
	size := 0
	if b[0]&flagHead != 0 {
		size = len(typ) + len(id) + recordHeadFixed
	}
	if n := packedLen(b[17:]); n > 0 {
		size += n
	}
	out := scratch[:0]
	if cap(out) < size {
		out = make([]byte, 0, size)
	}
	if b[0]&flagHead != 0 {
		out = recordHead(out, typ, id, recordVersion(b), time.UnixMicro(int64(binary.BigEndian.Uint64(b[9:]))))
	}
	return unpackJSON(out, b[17:])
}

func recordDeleted(b []byte) bool { return len(b) > 0 && b[0]&flagDeleted != 0 }

func recordVersion(b []byte) int64 { return int64(binary.BigEndian.Uint64(b[1:])) }

func historyKey(id string, version int64) []byte {
	k := make([]byte, len(id)+9)
	copy(k, id)
	binary.BigEndian.PutUint64(k[len(id)+1:], uint64(version))
	return k
}

// changeValue is what the change log holds per write: a zero byte, the
// version, the type (empty in a type's own log, "C:<Type>") and the id: 16
// bytes for an id that is a UUID as this server makes them (lower case),
// else as it is. The log written before held type, 0, id, 0, then the
// version in 8 bytes; parseChange reads both.
func changeValue(typ, id string, version int64) []byte {
	b := make([]byte, 1, 4+len(typ)+len(id))
	b = binary.AppendUvarint(b, uint64(version))
	b = binary.AppendUvarint(b, uint64(len(typ)))
	b = append(b, typ...)
	if u, ok := uuidBytes(id); ok {
		b = append(b, 1)
		return append(b, u[:]...)
	}
	b = append(b, 2)
	return append(b, id...)
}

// parseChange reads a change value of the log of type logType ("" for
// the global log).
func parseChange(b []byte, logType string) (typ, id string, version int64, ok bool) {
	if len(b) > 0 && b[0] == 0 {
		b = b[1:]
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return
		}
		b = b[n:]
		tl, n := binary.Uvarint(b)
		if n <= 0 || uint64(len(b)-n) < tl+1 {
			return
		}
		typ, b = string(b[n:n+int(tl)]), b[n+int(tl):]
		if typ == "" {
			typ = logType
		}
		switch {
		case b[0] == 1 && len(b) == 17:
			id = uuidString(b[1:])
		case b[0] == 2:
			id = string(b[1:])
		default:
			return
		}
		return typ, id, int64(v), typ != ""
	}
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

// uuidBytes returns the 16 bytes of id when id is a UUID written the way
// uuidString writes it back: lower-case hex in groups of 8-4-4-4-12.
func uuidBytes(id string) (u [16]byte, ok bool) {
	if len(id) != 36 {
		return u, false
	}
	j := 0
	for i := 0; i < 36; {
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if id[i] != '-' {
				return u, false
			}
			i++
			continue
		}
		hi, ok1 := lowerHex(id[i])
		lo, ok2 := lowerHex(id[i+1])
		if !ok1 || !ok2 {
			return u, false
		}
		u[j] = hi<<4 | lo
		j++
		i += 2
	}
	return u, true
}

func lowerHex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

func uuidString(u []byte) string {
	const hexDigits = "0123456789abcdef"
	var b [36]byte
	j := 0
	for i, x := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b[j] = '-'
			j++
		}
		b[j], b[j+1] = hexDigits[x>>4], hexDigits[x&15]
		j += 2
	}
	return string(b[:])
}

func seqKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// stampCanonical is stamp for JSON in the form Doc.Canonical describes:
// the head (recordHead) in place of its beginning up to meta's first
// member, the rest as it is; nil when data does not begin with typ, id
// and meta as that form has them.
func stampCanonical(data []byte, typ, id string, version int64, lastUpdated time.Time) []byte {
	const (
		a = `{"resourceType":"`
		b = `","id":"`
		c = `","meta":{`
	)
	n := len(a) + len(typ) + len(b) + len(id) + len(c)
	if len(data) <= n || string(data[:len(a)]) != a || string(data[len(a):len(a)+len(typ)]) != typ ||
		string(data[len(a)+len(typ):len(a)+len(typ)+len(b)]) != b || string(data[len(a)+len(typ)+len(b):n-len(c)]) != id ||
		string(data[n-len(c):n]) != c {
		return nil
	}
	rest := data[n:]
	out := recordHead(make([]byte, 0, len(data)+64), typ, id, version, lastUpdated)
	if rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, rest...)
}

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
		{Key: "lastUpdated", Raw: quote(lastUpdated.UTC().Format(stampLayout))},
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
