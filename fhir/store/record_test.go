package store

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/internal/pgtest"
)

func openTestStore(t *testing.T) (DB, *Store) {
	t.Helper()
	db, err := OpenDB(context.Background(), filepath.Join(t.TempDir(), "s.db"), DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := Open(db, openRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(); db.Close() })
	return db, st
}

func openRegistry() *search.Registry { return testReg }

// testDSN returns a new database named name for t on the backend
// P2P_TEST_DB names (as storetest.DSN does, which the store's own tests
// cannot import): it stays until t ends, so that a test can close it and
// open it again.
func testDSN(t *testing.T, name string) string {
	t.Helper()
	if os.Getenv("P2P_TEST_DB") == "postgres" {
		return pgtest.Database(t)
	}
	return filepath.Join(t.TempDir(), name+".db")
}

// openDSN opens a store on the database dsn. The caller closes both.
func openDSN(t *testing.T, dsn string) (DB, *Store) {
	t.Helper()
	db, err := OpenDB(context.Background(), dsn, DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := Open(db, testReg, nil)
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	return db, st
}

// writeDocs writes docs, 200 to a transaction.
func writeDocs(t *testing.T, st *Store, docs []*Doc) {
	t.Helper()
	for i := 0; i < len(docs); i += 200 {
		err := st.Write(context.Background(), func(tx *Tx) error {
			for _, d := range docs[i:min(i+200, len(docs))] {
				if _, err := tx.Put(d, PutOptions{}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

func testDoc(t *testing.T, typ, id, body string) *Doc {
	t.Helper()
	var m map[string]any
	dec := json.NewDecoder(strings.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	return &Doc{Type: typ, ID: id, Map: m, JSON: []byte(body)}
}

// oldRecord is a version as the store wrote it before records were
// compressed: flags, version, lastUpdated, then the JSON as it is.
func oldRecord(vid int64, lastUpdated time.Time, json string) []byte {
	b := make([]byte, 17, 17+len(json))
	binary.BigEndian.PutUint64(b[1:], uint64(vid))
	binary.BigEndian.PutUint64(b[9:], uint64(lastUpdated.UnixMicro()))
	return append(b, json...)
}

// TestRecordsWrittenBeforeCompressionStayReadable: a database written
// before compression holds each version's JSON as it is, the current one
// both as current and in history. Read, vread, history and the scan of
// current resources read it; an update keeps every version readable, and
// a redaction of the current version reaches its copy in history too.
func TestRecordsWrittenBeforeCompressionStayReadable(t *testing.T) {
	_, st := openTestStore(t)
	ctx := context.Background()
	lu := time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)
	v1 := `{"resourceType":"Patient","id":"old","meta":{"versionId":"1","lastUpdated":"2024-05-06T07:08:09.123456Z"},"gender":"female"}`
	err := st.Write(ctx, func(tx *Tx) error {
		// Write it with the store, then put the records back in the old form.
		if _, err := tx.Put(testDoc(t, "Patient", "old", `{"resourceType":"Patient","gender":"female"}`), PutOptions{}); err != nil {
			return err
		}
		rec := oldRecord(1, lu, v1)
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
	check := func(what string, v *Version, err error, want string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if string(v.JSON) != want {
			t.Errorf("%s: JSON %s, want %s", what, v.JSON, want)
		}
	}
	_ = st.View(ctx, func(tx *Tx) error {
		v, err := tx.Read("Patient", "old")
		check("read", v, err, v1)
		if !v.LastUpdated.Equal(lu) || v.VersionID != 1 {
			t.Errorf("read: version %d at %s, want 1 at %s", v.VersionID, v.LastUpdated, lu)
		}
		v, err = tx.VRead("Patient", "old", 1)
		check("vread", v, err, v1)
		var scanned []string
		tx.ScanCurrent("Patient", "", func(id string, _ time.Time, json []byte) bool {
			scanned = append(scanned, id+" "+string(json))
			return true
		})
		if len(scanned) != 1 || scanned[0] != "old "+v1 {
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
		check("vread 1 after an update", v, err, v1)
		v, err = tx.Read("Patient", "old")
		check("read after an update", v, err, string(v2.JSON))
		page, err := tx.History(HistoryQuery{Type: "Patient", ID: "old"})
		if err != nil || len(page.Versions) != 2 || string(page.Versions[1].JSON) != v1 {
			t.Errorf("instance history: %v, %+v", err, page)
		}
		return nil
	})

	// A redaction of the current version of an old database replaces
	// its copy in history as well.
	v3 := `{"resourceType":"Patient","id":"old","meta":{"versionId":"3","lastUpdated":"2024-05-06T07:08:09.123456Z"},"gender":"other"}`
	err = st.Write(ctx, func(tx *Tx) error {
		rec := oldRecord(3, lu, v3)
		if err := tx.btx.Bucket([]byte("R:Patient")).Put([]byte("old"), rec); err != nil {
			return err
		}
		if err := tx.btx.Bucket([]byte("H:Patient")).Put(historyKey("old", 3), rec); err != nil {
			return err
		}
		return tx.Redact("Patient", "old", 3, []byte(strings.Replace(v3, "other", "unknown", 1)))
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = st.View(ctx, func(tx *Tx) error {
		for _, b := range []string{"R:Patient", "H:Patient"} {
			tx.btx.Bucket([]byte(b)).ForEach(func(k, v []byte) error {
				if strings.Contains(string(v), "other") {
					t.Errorf("%s %q still holds the redacted JSON", b, k)
				}
				return nil
			})
		}
		v, err := tx.VRead("Patient", "old", 3)
		check("vread of the redacted version", v, err, strings.Replace(v3, "other", "unknown", 1))
		return nil
	})
}

// TestEachVersionStoredOnce: the current version is kept as current only,
// the versions it replaced in history only, each compressed; every one of
// them reads back whole.
func TestEachVersionStoredOnce(t *testing.T) {
	_, st := openTestStore(t)
	ctx := context.Background()
	note := strings.Repeat("a note that repeats itself. ", 20)
	var jsons []string
	for i := range 3 {
		err := st.Write(ctx, func(tx *Tx) error {
			v, err := tx.Put(testDoc(t, "Observation", "o", `{"resourceType":"Observation","status":"final","code":{"text":"v`+string(rune('1'+i))+`"},"note":[{"text":"`+note+`"}]}`), PutOptions{})
			if err == nil {
				jsons = append(jsons, string(v.JSON))
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	err := st.Write(ctx, func(tx *Tx) error { _, err := tx.Delete("Observation", "o", 0); return err })
	if err != nil {
		t.Fatal(err)
	}
	_ = st.View(ctx, func(tx *Tx) error {
		cur := tx.btx.Bucket([]byte("R:Observation")).Get([]byte("o"))
		if !recordDeleted(cur) || recordVersion(cur) != 4 {
			t.Errorf("current record: deleted %v, version %d; want the deletion, version 4", recordDeleted(cur), recordVersion(cur))
		}
		hist := tx.btx.Bucket([]byte("H:Observation"))
		if hist.Get(historyKey("o", 4)) != nil {
			t.Error("the current version is in history too")
		}
		for vid := int64(1); vid <= 3; vid++ {
			raw := hist.Get(historyKey("o", vid))
			if raw == nil {
				t.Fatalf("version %d is not in history", vid)
			}
			if raw[0]&flagPacked == 0 || len(raw)-17 >= len(jsons[vid-1])/2 {
				t.Errorf("version %d: %d bytes stored for %d of JSON, packed %v", vid, len(raw)-17, len(jsons[vid-1]), raw[0]&flagPacked != 0)
			}
			v, err := tx.VRead("Observation", "o", vid)
			if err != nil || string(v.JSON) != jsons[vid-1] {
				t.Errorf("vread %d: %v %s", vid, err, v.JSON)
			}
		}
		page, err := tx.History(HistoryQuery{})
		if err != nil || len(page.Versions) != 4 || !page.Versions[0].Deleted || string(page.Versions[3].JSON) != jsons[0] {
			t.Errorf("system history: %v %+v", err, page)
		}
		return nil
	})
}

// TestChangeLogValuesReadBack: a change log value gives back type, id and
// version, whatever the id (a UUID as the server makes them takes 16
// bytes; any other id is kept as it is), in the global log and in a
// type's own (which does not repeat the type); values of the form written
// before read as they did.
func TestChangeLogValuesReadBack(t *testing.T) {
	for _, id := range []string{
		"019ad3a4-5b6c-7d8e-9f01-23456789abcd",
		"019AD3A4-5B6C-7D8E-9F01-23456789ABCD", // upper case: kept as it is
		"019ad3a4-5b6c-7d8e-9f01-23456789abcg",
		"019ad3a45b6c-7d8e-9f01-23456789abcde",
		"a", "patient-1.example", strings.Repeat("z", 64),
	} {
		for _, logType := range []string{"", "Observation"} {
			typ := "Observation"
			if logType != "" {
				typ = ""
			}
			v := changeValue(typ, id, 1<<40+3)
			gt, gid, gv, ok := parseChange(v, logType)
			if !ok || gt != "Observation" || gid != id || gv != 1<<40+3 {
				t.Errorf("%q in log %q: got %q %q %d %v", id, logType, gt, gid, gv, ok)
			}
			if _, isUUID := uuidBytes(id); isUUID && len(v) > 1+6+1+len(typ)+17 {
				t.Errorf("%q takes %d bytes", id, len(v))
			}
		}
	}
	old := append([]byte("Patient\x00p-1\x00"), 0, 0, 0, 0, 0, 0, 0, 7)
	if typ, id, v, ok := parseChange(old, "Patient"); !ok || typ != "Patient" || id != "p-1" || v != 7 {
		t.Errorf("old form: %q %q %d %v", typ, id, v, ok)
	}
	for _, bad := range [][]byte{{0}, {0, 1}, {0, 1, 0}, {0, 1, 0, 1, 2}, {0, 1, 9, 'a'}} {
		if _, _, _, ok := parseChange(bad, ""); ok {
			t.Errorf("% x parsed", bad)
		}
	}
}

// TestRecordRoundTrip: a record gives back its JSON byte for byte, whether
// it starts with the head made again on reading (then not stored) or not.
func TestRecordRoundTrip(t *testing.T) {
	lu := time.Date(2025, 1, 2, 3, 4, 5, 6000, time.UTC)
	for _, json := range []string{
		`{"resourceType":"Patient","id":"p1","meta":{"versionId":"12","lastUpdated":"2025-01-02T03:04:05.000006Z"},"gender":"male"}`,
		`{"resourceType":"Patient","id":"p1","meta":{"versionId":"12","lastUpdated":"2025-01-02T03:04:05.000006Z","source":"#a"},"gender":"male"}`,
		`{"resourceType":"Patient","id":"p1","meta":{"versionId":"12","lastUpdated":"2025-01-02T03:04:05.000007Z"},"gender":"male"}`,
		`{"resourceType":"Patient","id":"p2","meta":{"versionId":"12","lastUpdated":"2025-01-02T03:04:05.000006Z"}}`,
		`{"id":"p1","resourceType":"Patient"}`,
		`{}`,
	} {
		v := &Version{Type: "Patient", ID: "p1", VersionID: 12, LastUpdated: lu, JSON: []byte(json)}
		rec := encodeRecord(v)
		if head := strings.HasPrefix(json, `{"resourceType":"Patient","id":"p1","meta":{"versionId":"12","lastUpdated":"2025-01-02T03:04:05.000006Z"`); head != (rec[0]&flagHead != 0) {
			t.Errorf("%s: head left out %v", json, !head)
		}
		got, err := decodeRecord("Patient", "p1", rec, true)
		if err != nil || string(got.JSON) != json || got.VersionID != 12 || !got.LastUpdated.Equal(lu) {
			t.Errorf("%s: got %v %s", json, err, got.JSON)
		}
		scan, err := recordJSON("Patient", "p1", rec, make([]byte, 0, 8))
		if err != nil || string(scan) != json {
			t.Errorf("%s: recordJSON %v %s", json, err, scan)
		}
	}
}

// BenchmarkRecordDecode measures reading back one stored Observation's
// JSON (decompressed, its head made again), and reports its stored size.
func BenchmarkRecordDecode(b *testing.B) {
	js := []byte(`{"resourceType":"Observation","id":"019ad3a4-5b6c-7d8e-9f01-23456789abcd","meta":{"versionId":"1","lastUpdated":"2026-11-30T08:44:19.123456Z"},"status":"final","code":{"coding":[{"system":"urn:load","code":"c5","display":"Load code 5"}]},"subject":{"reference":"Patient/019ad3a4-5b6c-7d8e-9f01-23456789abce"},"effectiveDateTime":"2015-06-06T10:00:00Z","valueQuantity":{"value":35.5,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"}}`)
	lu, _ := time.Parse(time.RFC3339Nano, "2026-11-30T08:44:19.123456Z")
	const id = "019ad3a4-5b6c-7d8e-9f01-23456789abcd"
	rec := encodeRecord(&Version{Type: "Observation", ID: id, VersionID: 1, LastUpdated: lu, JSON: js})
	b.ReportMetric(float64(len(rec)), "stored-bytes")
	b.ReportAllocs()
	for b.Loop() {
		v, err := decodeRecord("Observation", id, rec, true)
		if err != nil || len(v.JSON) != len(js) {
			b.Fatal(err)
		}
	}
}

// TestRestampIsPrepareAtTheNewTime: a Doc prepared before a version the
// writer has written since is stamped again at the later time (writtenAt)
// by changing only what depends on the time; the result must be exactly
// what preparing at that time gives — stored JSON, record, and index
// entries (_lastUpdated, and the other parameters that read meta).
func TestRestampIsPrepareAtTheNewTime(t *testing.T) {
	_, st := openTestStore(t)
	docs := []string{
		`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"1-8"}]},"meta":{"tag":[{"system":"urn:t","code":"x"}],"lastUpdated":"2001-01-01T00:00:00Z"}}`,
		`{"resourceType":"Patient","name":[{"family":"Restamp"}],"birthDate":"1970-01-01"}`,
		`{"resourceType":"Patient","meta":{"profile":["http://example.org/p"],"versionId":"9"},"active":true}`,
	}
	t1 := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	t2 := t1.Add(1234567 * time.Microsecond)
	for i, raw := range docs {
		newDoc := func() *Doc {
			var m map[string]any
			dec := json.NewDecoder(strings.NewReader(raw))
			dec.UseNumber()
			if err := dec.Decode(&m); err != nil {
				t.Fatal(err)
			}
			return &Doc{Type: m["resourceType"].(string), ID: "id-" + string(rune('a'+i)), Map: m, JSON: []byte(raw)}
		}
		for _, shed := range []bool{false, true} {
			got, want := newDoc(), newDoc()
			st.prepareAt(got, t1)
			if shed {
				// The writer restamps a Doc whose Map was shed (ShedMap)
				// from what was kept of it.
				// (Not a Patient's: its deceased parameter reads
				// elements not known ahead.)
				if shed := st.ShedMap(got); shed != (got.Type == "Observation") {
					t.Fatalf("doc %d: ShedMap answered %v", i, shed)
				}
				if _, ok := got.Map["status"]; ok && got.Type == "Observation" {
					t.Fatalf("doc %d: the shed Map %v", i, got.Map)
				}
			}
			st.restamp(got, t2)
			st.prepareAt(want, t2)
			if string(got.stamped) != string(want.stamped) {
				t.Errorf("doc %d: stored JSON\n got %s\nwant %s", i, got.stamped, want.stamped)
			}
			if string(got.record) != string(want.record) {
				t.Errorf("doc %d: the record differs from one prepared at the new time", i)
			}
			if !got.LastUpdated.Equal(t2) {
				t.Errorf("doc %d: LastUpdated %s, want %s", i, got.LastUpdated, t2)
			}
			if g, w := entrySet(got.Entries), entrySet(want.Entries); g != w {
				t.Errorf("doc %d: index entries\n got %s\nwant %s", i, g, w)
			}
			if !strings.Contains(entrySet(got.Entries), "_lastUpdated") {
				t.Errorf("doc %d: no _lastUpdated entry: %s", i, entrySet(got.Entries))
			}
			v, err := decodeRecord(got.Type, got.ID, got.record, true)
			if err != nil || string(v.JSON) != string(want.stamped) || !v.LastUpdated.Equal(t2) {
				t.Errorf("doc %d: the record reads back as %s at %s (%v)", i, v.JSON, v.LastUpdated, err)
			}
		}
	}
}

// TestShedMapThenSetOrPrepare: a Doc whose Map was shed (ShedMap) is
// decoded again from its JSON by Set (a validator amending it) and by a
// Prepare again, so that both see the whole resource: the index entries
// and stored form are those of a Doc never shed.
func TestShedMapThenSetOrPrepare(t *testing.T) {
	_, st := openTestStore(t)
	raw := `{"resourceType":"Observation","meta":{"tag":[{"system":"urn:t","code":"x"}]},"status":"final","code":{"coding":[{"system":"http://loinc.org","code":"1-8"}]},"effectiveDateTime":"2015-06-06T10:00:00Z"}`
	newDoc := func() *Doc {
		var m map[string]any
		dec := json.NewDecoder(strings.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		return &Doc{Type: "Observation", ID: "shed-1", Map: m, JSON: []byte(raw)}
	}
	t1 := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	got, want := newDoc(), newDoc()
	st.prepareAt(got, t1)
	if !st.ShedMap(got) {
		t.Fatal("ShedMap kept the Map")
	}
	if _, ok := got.Map["code"]; ok {
		t.Fatalf("the shed Map still holds code: %v", got.Map)
	}
	if err := got.Set("status", "amended"); err != nil {
		t.Fatal(err)
	}
	st.prepareAt(want, t1)
	if err := want.Set("status", "amended"); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Map, want.Map) {
		t.Fatalf("after Set the Map\n got %v\nwant %v", got.Map, want.Map)
	}
	st.prepareAt(got, t1)
	st.prepareAt(want, t1)
	if g, w := entrySet(got.Entries), entrySet(want.Entries); g != w || !strings.Contains(g, "1-8") {
		t.Errorf("index entries\n got %s\nwant %s", g, w)
	}
	if string(got.stamped) != string(want.stamped) {
		t.Errorf("stored JSON\n got %s\nwant %s", got.stamped, want.stamped)
	}
	// Prepared again without Set: still the whole resource.
	again := newDoc()
	st.prepareAt(again, t1)
	st.ShedMap(again)
	st.prepareAt(again, t1.Add(time.Second))
	if !strings.Contains(entrySet(again.Entries), "1-8") {
		t.Errorf("prepared again after ShedMap, its entries lack the code:\n%s", entrySet(again.Entries))
	}
}

func entrySet(es []search.Entry) string {
	l := make([]string, 0, len(es))
	for _, e := range es {
		l = append(l, e.Param+"="+e.Key+"/"+string(e.Payload))
	}
	slices.Sort(l)
	return strings.Join(l, "\n")
}

// TestStampCanonical: JSON in the form Doc.Canonical describes is stamped
// as stamp stamps it, without being read; JSON not beginning as that
// form does is left to stamp.
func TestStampCanonical(t *testing.T) {
	at := time.Date(2026, 11, 30, 10, 0, 0, 123456000, time.UTC)
	for _, c := range []struct {
		name, typ, id, json string
		fast                bool
	}{
		{"meta with source", "Observation", "0123456789abcdef.o1", `{"resourceType":"Observation","id":"0123456789abcdef.o1","meta":{"source":"http://old.example/fhir/Observation/o1"},"status":"final","code":{"text":"a b"}}`, true},
		{"meta with profile and source", "Patient", "p-1", `{"resourceType":"Patient","id":"p-1","meta":{"profile":["http://x/p"],"source":"s"},"gender":"female"}`, true},
		{"empty meta", "Patient", "p-1", `{"resourceType":"Patient","id":"p-1","meta":{},"gender":"female"}`, true},
		{"nothing after meta", "Patient", "p-1", `{"resourceType":"Patient","id":"p-1","meta":{"source":"s"}}`, true},
		{"another id", "Patient", "p-2", `{"resourceType":"Patient","id":"p-1","meta":{"source":"s"}}`, false},
		{"an id that starts the same", "Patient", "p", `{"resourceType":"Patient","id":"p-1","meta":{"source":"s"}}`, false},
		{"another type", "Group", "p-1", `{"resourceType":"Patient","id":"p-1","meta":{"source":"s"}}`, false},
		{"meta not third", "Patient", "p-1", `{"resourceType":"Patient","id":"p-1","gender":"female","meta":{"source":"s"}}`, false},
		{"not compact", "Patient", "p-1", `{ "resourceType":"Patient","id":"p-1","meta":{"source":"s"}}`, false},
		{"cut short", "Patient", "p-1", `{"resourceType":"Patient","id":"p-1","meta":{`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := stampCanonical([]byte(c.json), c.typ, c.id, 3, at)
			if !c.fast {
				if got != nil {
					t.Fatalf("stamped %s", got)
				}
				return
			}
			want, err := stamp([]byte(c.json), c.typ, c.id, 3, at)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Errorf("got  %s\nwant %s", got, want)
			}
		})
	}
}

// TestStampIsTheLayout: the head of a stored version (recordHead) writes
// lastUpdated as time's own formatting of stampLayout does, byte for byte,
// whatever the time (it is part of the record format: a record stored
// without its head is read back with the head made again), in any time
// zone, with nanoseconds cut to microseconds, and outside years 0-9999.
func TestStampIsTheLayout(t *testing.T) {
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		paris = time.FixedZone("CET", 3600)
	}
	times := []time.Time{
		{},
		time.Unix(0, 0),
		time.Date(2025, 1, 2, 3, 4, 5, 6000, time.UTC),
		time.Date(2025, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(2024, 2, 29, 0, 0, 0, 999, time.UTC),
		time.Date(2024, 7, 1, 0, 30, 0, 123456789, paris),
		time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(0, 3, 4, 5, 6, 7, 8000, time.UTC),
	}
	for i := range 2000 {
		times = append(times, time.UnixMicro(int64(i)*7919*1e9+int64(i)*104729).UTC())
	}
	for _, tm := range times {
		want := tm.UTC().AppendFormat([]byte("x"), stampLayout)
		if got := appendStamp([]byte("x"), tm); string(got) != string(want) {
			t.Errorf("%v: %s, want %s", tm, got, want)
		}
	}
}
