package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/p2pserver/p2pserver/internal/testdata"
)

// zstdRecordEncoder is the encoder records were written with before S2:
// zstd at its fastest level with the 32769 dictionary, no checksum, one
// segment, literals not entropy coded.
func zstdRecordEncoder(tb testing.TB) *zstd.Encoder {
	tb.Helper()
	pack, err := dictFiles.ReadFile(packDict)
	if err != nil {
		tb.Fatal(err)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderDict(pack),
		zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderCRC(false),
		zstd.WithSingleSegment(true), zstd.WithLowerEncoderMem(true),
		zstd.WithNoEntropyCompression(true))
	if err != nil {
		tb.Fatal(err)
	}
	return enc
}

// zstdRecord is v as encodeRecord wrote it before S2: the same flags,
// version and lastUpdated, the head left out the same way, the rest a
// zstd frame.
func zstdRecord(enc *zstd.Encoder, v *Version) []byte {
	b := encodeRecord(&Version{Type: v.Type, ID: v.ID, VersionID: v.VersionID, LastUpdated: v.LastUpdated, Deleted: v.Deleted})
	body := v.JSON
	var head [160]byte
	if h := recordHead(head[:0], v.Type, v.ID, v.VersionID, v.LastUpdated); bytes.HasPrefix(body, h) {
		body = body[len(h):]
		b[0] |= flagHead
	}
	b[0] |= flagPacked
	return enc.EncodeAll(body, b)
}

// syntheaResources are the resources of a few Synthea bundles, compacted,
// each with the head stamp gives it (so that records leave it out) or, for
// every third, as it is.
func syntheaResources(tb testing.TB, files int) []*Version {
	tb.Helper()
	lu := time.Date(2026, 11, 30, 8, 44, 19, 123456000, time.UTC)
	var out []*Version
	for _, f := range testdata.Glob(tb, "synthea/*.json")[:files] {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		var bundle struct {
			Entry []struct{ Resource json.RawMessage }
		}
		if err := json.Unmarshal(b, &bundle); err != nil {
			tb.Fatal(err)
		}
		for _, e := range bundle.Entry {
			var r struct{ ResourceType, ID string }
			if err := json.Unmarshal(e.Resource, &r); err != nil {
				tb.Fatal(err)
			}
			var c bytes.Buffer
			if err := json.Compact(&c, e.Resource); err != nil {
				tb.Fatal(err)
			}
			js := c.Bytes()
			vid := int64(1 + len(out)%5)
			if len(out)%3 != 0 {
				// Stored JSON begins with the head; the rest is the
				// resource's own members after resourceType and id.
				var m map[string]json.RawMessage
				if err := json.Unmarshal(js, &m); err != nil {
					tb.Fatal(err)
				}
				delete(m, "resourceType")
				delete(m, "id")
				delete(m, "meta")
				rest, err := json.Marshal(m)
				if err != nil {
					tb.Fatal(err)
				}
				js = recordHead(nil, r.ResourceType, r.ID, vid, lu)
				if len(rest) > 2 {
					js = append(append(js, "},"...), rest[1:]...)
				} else {
					js = append(js, "}}"...)
				}
			}
			out = append(out, &Version{Type: r.ResourceType, ID: r.ID, VersionID: vid, LastUpdated: lu, JSON: js})
		}
	}
	return out
}

// TestZstdRecordsReadBack: every record written with the zstd encoder
// before S2 reads back byte for byte, by decodeRecord (read, vread,
// history) and recordJSON (search and scans); so does the S2 record of
// the same version, which is what encodeRecord now writes.
func TestZstdRecordsReadBack(t *testing.T) {
	enc := zstdRecordEncoder(t)
	vs := syntheaResources(t, 2)
	heads := 0
	for _, v := range vs {
		old := zstdRecord(enc, v)
		cur := encodeRecord(v)
		if !isZstd(old[17:]) || isZstd(cur[17:]) || cur[17] != packS2Dict {
			t.Fatalf("%s/%s: the old record is not zstd or the new one not S2: % x / % x", v.Type, v.ID, old[17:21], cur[17:21])
		}
		if old[0] != cur[0] {
			t.Errorf("%s/%s: flags %b, the old record has %b", v.Type, v.ID, cur[0], old[0])
		}
		if old[0]&flagHead != 0 {
			heads++
		}
		for name, rec := range map[string][]byte{"zstd": old, "s2": cur} {
			got, err := decodeRecord(v.Type, v.ID, rec, true)
			if err != nil || !bytes.Equal(got.JSON, v.JSON) || got.VersionID != v.VersionID || !got.LastUpdated.Equal(v.LastUpdated) {
				t.Fatalf("%s record of %s/%s: %v, %s\nwant %s", name, v.Type, v.ID, err, got.JSON, v.JSON)
			}
			scan, err := recordJSON(v.Type, v.ID, rec, make([]byte, 0, 16))
			if err != nil || !bytes.Equal(scan, v.JSON) {
				t.Fatalf("%s record of %s/%s by recordJSON: %v, %s", name, v.Type, v.ID, err, scan)
			}
		}
	}
	if heads == 0 || heads == len(vs) {
		t.Fatalf("%d of %d records leave their head out: both kinds must be tried", heads, len(vs))
	}
}

// TestCorruptPackedRecords: a compressed body that is cut short, names a
// dictionary there is none of, or claims a length it does not hold is an
// error, not a panic or wrong JSON.
func TestCorruptPackedRecords(t *testing.T) {
	js := []byte(`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:load","code":"c5","display":"Load code 5"}]}}`)
	good := packJSON(nil, js)
	if got, err := unpackJSON(nil, good); err != nil || !bytes.Equal(got, js) {
		t.Fatalf("round trip: %v %s", err, got)
	}
	longer := append([]byte{packS2Dict}, binary.AppendUvarint(nil, uint64(len(js)+10))...)
	longer = append(longer, good[1+len(binary.AppendUvarint(nil, uint64(len(js)))):]...)
	for name, b := range map[string][]byte{
		"empty":              {},
		"dictionary only":    {packS2Dict},
		"unknown dictionary": append([]byte{9}, good[1:]...),
		"cut short":          good[:len(good)/2],
		"longer than it is":  longer,
		"zstd cut short":     zstdRecordEncoder(t).EncodeAll(js, nil)[:20],
	} {
		if got, err := unpackJSON([]byte("x"), b); err == nil {
			t.Errorf("%s: no error, %q", name, got)
		}
	}
}

// TestZstdDatabaseReadsBack: a database whose records were written with
// zstd reads back through the store (read, vread, history, scan) byte for
// byte, and a version written over one keeps the older readable.
func TestZstdDatabaseReadsBack(t *testing.T) {
	_, st := openTestStore(t)
	ctx := context.Background()
	enc := zstdRecordEncoder(t)
	lu := time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)
	v1 := &Version{Type: "Patient", ID: "old", VersionID: 1, LastUpdated: lu,
		JSON: []byte(`{"resourceType":"Patient","id":"old","meta":{"versionId":"1","lastUpdated":"2024-05-06T07:08:09.123456Z"},"gender":"female","name":[{"family":"Mueller","given":["Angelic"]}]}`)}
	err := st.Write(ctx, func(tx *Tx) error {
		if _, err := tx.Put(testDoc(t, "Patient", "old", `{"resourceType":"Patient","gender":"female"}`), PutOptions{}); err != nil {
			return err
		}
		rec := zstdRecord(enc, v1)
		if err := tx.btx.Bucket([]byte("R:Patient")).Put([]byte("old"), rec); err != nil {
			return err
		}
		h, err := tx.btx.CreateBucketIfNotExists([]byte("H:Patient"))
		if err != nil {
			return err
		}
		return h.Put(historyKey("old", 1), rec)
	})
	if err != nil {
		t.Fatal(err)
	}
	check := func(what string, v *Version, err error, want []byte) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !bytes.Equal(v.JSON, want) {
			t.Errorf("%s: JSON %s, want %s", what, v.JSON, want)
		}
	}
	_ = st.View(ctx, func(tx *Tx) error {
		v, err := tx.Read("Patient", "old")
		check("read", v, err, v1.JSON)
		v, err = tx.VRead("Patient", "old", 1)
		check("vread", v, err, v1.JSON)
		var scanned []string
		tx.ScanCurrent("Patient", "", func(id string, _ time.Time, json []byte) bool {
			scanned = append(scanned, id+" "+string(json))
			return true
		})
		if len(scanned) != 1 || scanned[0] != "old "+string(v1.JSON) {
			t.Errorf("scan: %q", scanned)
		}
		return nil
	})
	var v2 *Version
	err = st.Write(ctx, func(tx *Tx) error {
		var err error
		v2, err = tx.Put(testDoc(t, "Patient", "old", `{"resourceType":"Patient","gender":"male"}`), PutOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = st.View(ctx, func(tx *Tx) error {
		v, err := tx.VRead("Patient", "old", 1)
		check("vread 1 after an update", v, err, v1.JSON)
		v, err = tx.Read("Patient", "old")
		check("read after an update", v, err, v2.JSON)
		if rec := tx.btx.Bucket([]byte("R:Patient")).Get([]byte("old")); isZstd(rec[17:]) {
			t.Errorf("the new version was written with zstd")
		}
		page, err := tx.History(HistoryQuery{Type: "Patient", ID: "old"})
		if err != nil || len(page.Versions) != 2 || !bytes.Equal(page.Versions[1].JSON, v1.JSON) {
			t.Errorf("instance history: %v, %+v", err, page)
		}
		return nil
	})
}

// BenchmarkCompress packs and unpacks realistic stored JSON: the
// resources of four Synthea bundles and p2pload's Observation, with S2
// (what is written) and with the zstd encoder records were written with
// before. B/rec is the compressed size of a record's JSON, raw/rec its
// size before.
func BenchmarkCompress(b *testing.B) {
	var synthea [][]byte
	for _, v := range syntheaResources(b, 4) {
		// What encodeRecord packs: the JSON after the head it leaves out.
		synthea = append(synthea, bytes.TrimPrefix(v.JSON, recordHead(nil, v.Type, v.ID, v.VersionID, v.LastUpdated)))
	}
	var load [][]byte
	for i := range 1000 {
		load = append(load, fmt.Appendf(nil, `,"status":"final","code":{"coding":[{"system":"urn:load","code":"c%d","display":"Load code %d"}]},"subject":{"reference":"Patient/019ad3a4-5b6c-7d8e-9f01-%012d"},"effectiveDateTime":"20%02d-%02d-%02dT10:00:00Z","valueQuantity":{"value":%d.%d,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"}}`,
			i%500, i%500, i%97, 10+i%15, 1+i%12, 1+i%28, i%300, i%10))
	}
	enc := zstdRecordEncoder(b)
	codecs := []struct {
		name string
		pack func(dst, src []byte) []byte
	}{
		{"s2", packJSON},
		{"zstd", func(dst, src []byte) []byte { return enc.EncodeAll(src, dst) }},
	}
	for _, set := range []struct {
		name string
		recs [][]byte
	}{{"synthea", synthea}, {"observation", load}} {
		for _, c := range codecs {
			b.Run(set.name+"/"+c.name+"/pack", func(b *testing.B) {
				var total, raw int
				var dst []byte
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					r := set.recs[i%len(set.recs)]
					dst = c.pack(dst[:0], r)
					total += len(dst)
					raw += len(r)
				}
				b.ReportMetric(float64(total)/float64(b.N), "B/rec")
				b.ReportMetric(float64(raw)/float64(b.N), "raw/rec")
			})
			packed := make([][]byte, len(set.recs))
			for i, r := range set.recs {
				packed[i] = c.pack(nil, r)
			}
			b.Run(set.name+"/"+c.name+"/unpack", func(b *testing.B) {
				var dst []byte
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					var err error
					if dst, err = unpackJSON(dst[:0], packed[i%len(packed)]); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
