package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
	"github.com/p2pserver/p2pserver/internal/pgtest"
	td "github.com/p2pserver/p2pserver/internal/testdata"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// loadMember loads the Synthea member into p and returns their Patient id.
func loadMember(t *testing.T, p *payer) string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(td.Dir, "synthea", "Angelic_Mueller*.json"))
	if len(files) != 1 {
		t.Fatalf("synthea bundle: %v", files)
	}
	raw, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	var loaded map[string]any
	if st := p.call("POST", "/fhir", testAdmin, raw, &loaded); st != 200 {
		t.Fatalf("load: %d", st)
	}
	for _, e := range loaded["entry"].([]any) {
		loc := e.(map[string]any)["response"].(map[string]any)["location"].(string)
		if rest, ok := strings.CutPrefix(strings.TrimPrefix(loc, p.URL+"/fhir/"), "Patient/"); ok {
			id, _, _ := strings.Cut(rest, "/")
			return id
		}
	}
	t.Fatal("no Patient loaded")
	return ""
}

// runBatchJob starts a batch job for the member's tokens and waits for
// its end; it returns the job's final status.
func runBatchJob(t *testing.T, p *payer, pid int64, access, refresh, srcPatient string) map[string]any {
	t.Helper()
	job := map[string]any{
		"sourcePayer": map[string]any{"oidcToken": access, "oidcRefreshToken": refresh,
			"fhirBundleRequest": "Patient/" + srcPatient + "/$everything?_count=50", "patientId": srcPatient},
		"targetPayer": map[string]any{"patientId": "member-1", "organizationId": "PAYRB"},
	}
	var status map[string]any
	path := fmt.Sprintf("/api/oidc_servers/%d/batch_job", pid)
	if st := p.call("POST", path, testBackoffice, job, &status); st != 202 {
		t.Fatalf("start job: %d %v", st, status)
	}
	jobPath := fmt.Sprintf("%s/%v", path, status["batchJobId"])
	deadline := time.Now().Add(2 * time.Minute)
	for status["batchStatus"] != "COMPLETED" && status["batchStatus"] != "FAILED" {
		if time.Now().After(deadline) {
			t.Fatalf("job still %v", status["batchStatus"])
		}
		time.Sleep(50 * time.Millisecond)
		p.call("GET", jobPath, testBackoffice, nil, &status)
	}
	return status
}

// TestMigrateBoltToPostgres fills a bbolt database through the HTTP API
// (a resource with several versions and a delete in its history, a
// searchable Observation, an OIDC server definition with its client
// secret, a finished batch job), copies it with `p2pserver migrate` into
// PostgreSQL (a first copy cut short, then resumed; then run again, which
// only verifies), and starts p2pserver on PostgreSQL: history in the same
// order, vread, search and the job read back alike, and the definition's
// secret, sealed with -secret-key, still authenticates this payer at the
// source payer's token endpoint (a new job whose access token has expired
// refreshes it).
func TestMigrateBoltToPostgres(t *testing.T) {
	pgURL := pgtest.Database(t)
	idp := oidctest.New(t)
	idp.AddClient("payer-b", "payer-b-secret")
	source := startPayer(t, "-admin-token", testAdmin, "-trusted-issuers", idp.Issuer())
	srcPatient := loadMember(t, source)

	boltPath := filepath.Join(t.TempDir(), "old.db")
	args := []string{"-admin-token", testAdmin, "-backoffice-token", testBackoffice, "-secret-key", testSecretKey, "-trusted-issuers", idp.Issuer()}
	old := startPayer(t, append([]string{"-db", boltPath}, args...)...)
	for i, body := range []string{
		`{"resourceType":"Patient","id":"member-1","name":[{"family":"Mueller","given":["Angelic"]}]}`,
		`{"resourceType":"Patient","id":"member-1","name":[{"family":"Mueller","given":["Angelic"]}],"birthDate":"1990-01-01"}`,
		`{"resourceType":"Patient","id":"member-1","name":[{"family":"Müller","given":["Angelic"]}],"birthDate":"1990-01-01"}`,
	} {
		if st := old.call("PUT", "/fhir/Patient/member-1", testAdmin, body, nil); st != 200 && st != 201 {
			t.Fatalf("version %d: %d", i+1, st)
		}
	}
	old.call("PUT", "/fhir/Observation/gone", testAdmin, `{"resourceType":"Observation","id":"gone","status":"final","code":{"text":"x"}}`, nil)
	old.call("DELETE", "/fhir/Observation/gone", testAdmin, nil, nil)
	old.call("PUT", "/fhir/Observation/glucose", testAdmin, `{"resourceType":"Observation","id":"glucose","status":"final","code":{"coding":[{"system":"urn:t","code":"glucose"}]},"subject":{"reference":"Patient/member-1"}}`, nil)
	def := map[string]any{"name": "Source Payer A", "issuer": idp.Issuer(), "clientId": "payer-b", "clientSecret": "payer-b-secret",
		"fhirEndpoint": source.URL + "/fhir", "tokenEndpoint": idp.TokenEndpoint(), "authWellKnown": idp.WellKnownURL(),
		"scopes": "openid offline_access patient/*.read", "responseType": "code", "organizationId": "PAYRA"}
	var created map[string]any
	if st := old.call("POST", "/api/oidc_servers", testAdmin, def, &created); st != 201 {
		t.Fatalf("register the source: %d %v", st, created)
	}
	pid := int64(created["pid"].(float64))
	tok, err := idp.MintFor([]string{source.URL + "/fhir"}, oidctest.Grant{ClientID: "payer-b", Patient: srcPatient})
	if err != nil {
		t.Fatal(err)
	}
	job := runBatchJob(t, old, pid, tok.AccessToken, tok.RefreshToken, srcPatient)
	if job["batchStatus"] != "COMPLETED" {
		t.Fatalf("job on bbolt: %v", job)
	}
	reads := []string{"/fhir/Patient/member-1/_history", "/fhir/Patient/member-1/_history/2", "/fhir/Observation/gone/_history",
		"/fhir/Observation?code=urn:t|glucose", fmt.Sprintf("/api/oidc_servers/%d/batch_job/%v", pid, job["batchJobId"]),
		fmt.Sprintf("/api/oidc_servers/%d", pid)}
	before := map[string]string{}
	for _, path := range reads {
		before[path] = readNormalized(t, old, path)
	}
	old.stop()

	// A copy cut short after a few buckets, then the command: it goes on.
	ctx := context.Background()
	src, err := store.OpenDB(ctx, boltPath, store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dst, err := store.OpenDB(ctx, pgURL, store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cut, stop := context.WithCancel(ctx)
	chunks := 0
	if _, err := store.Copy(cut, src, dst, func(string, int) {
		if chunks++; chunks == 5 {
			stop()
		}
	}); err == nil {
		t.Fatal("a copy cut short reported success")
	}
	src.Close()
	dst.Close()
	var out bytes.Buffer
	if err := runMigrate(ctx, []string{"-from", boltPath, "-to", pgURL, "-quiet"}, &out); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out.String())
	}
	for _, want := range []string{"R:Patient", "H:Patient", "oidc_servers", "batch_jobs", "complete and verified"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the migrate output does not name %q:\n%s", want, out.String())
		}
	}
	t.Logf("migrate:\n%s", out.String())
	out.Reset()
	if err := runMigrate(ctx, []string{"-from", boltPath, "-to", pgURL, "-quiet"}, &out); err != nil {
		t.Fatalf("migrate again (verify only): %v\n%s", err, out.String())
	}

	nw := startPayer(t, append([]string{"-db", pgURL}, args...)...)
	for _, path := range reads {
		if got := readNormalized(t, nw, path); got != before[path] {
			t.Errorf("GET %s after the migration:\n%s\nbefore:\n%s", path, got, before[path])
		}
	}
	// The definition's client secret authenticates the refresh of an
	// expired access token.
	tok2, err := idp.MintFor([]string{source.URL + "/fhir"}, oidctest.Grant{ClientID: "payer-b", Patient: srcPatient, AccessTokenLifetime: -time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	job2 := runBatchJob(t, nw, pid, tok2.AccessToken, tok2.RefreshToken, srcPatient)
	if job2["batchStatus"] != "COMPLETED" || job2["tokenRefreshes"] == float64(0) {
		t.Fatalf("a job on PostgreSQL with the migrated definition: %v", job2)
	}
}

// readNormalized GETs path and returns its JSON with what differs per
// answer (Bundle ids and timestamps, links' host) left out.
func readNormalized(t *testing.T, p *payer, path string) string {
	t.Helper()
	var m map[string]any
	if st := p.call("GET", path, testAdmin, nil, &m); st != 200 {
		t.Fatalf("GET %s: %d %v", path, st, m)
	}
	if m["resourceType"] == "Bundle" {
		delete(m, "id")
		delete(m, "meta")
		delete(m, "timestamp")
		delete(m, "link")
	}
	raw, _ := json.Marshal(m)
	return strings.ReplaceAll(string(raw), p.URL, "BASE")
}

// TestServerRefusesUnfinishedCopy: a `p2pserver migrate` cut short
// leaves the PostgreSQL database with part of the data. p2pserver
// started on it refuses, naming the migrate to finish (serving it would
// answer 404 for resources not copied yet, and a write made there would be
// overwritten when the copy resumes); once the copy is finished and
// verified it starts.
func TestServerRefusesUnfinishedCopy(t *testing.T) {
	ctx := context.Background()
	pgURL := pgtest.Database(t)
	src, err := store.OpenDB(ctx, filepath.Join(t.TempDir(), "old.db"), store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if err := src.Update(ctx, func(tx backend.Tx) error {
		b, err := tx.CreateBucketIfNotExists([]byte("bulk"))
		if err != nil {
			return err
		}
		for i := range store.CopyChunk + 10 {
			if err := b.Put(fmt.Appendf(nil, "k%06d", i), []byte("v")); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	dst, err := store.OpenDB(ctx, pgURL, store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	cut, cancel := context.WithCancel(ctx)
	if _, err := store.Copy(cut, src, dst, func(string, int) { cancel() }); err == nil {
		t.Fatal("a copy cancelled after its first chunk finished")
	}
	cfg, err := parseConfig([]string{"-db", pgURL, "-addr", "127.0.0.1:0", "-secret-key", testSecretKey}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	// A server that does start serves until this bound, and answers nil.
	bounded, stop := context.WithTimeout(ctx, 30*time.Second)
	defer stop()
	err = run(bounded, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if !errors.Is(err, store.ErrCopyUnfinished) || !strings.Contains(err.Error(), "migrate") {
		t.Fatalf("p2pserver on an unfinished copy: %v; want a refusal naming migrate", err)
	}
	if _, err := store.Copy(ctx, src, dst, nil); err != nil {
		t.Fatal(err)
	}
	if err := store.CheckCopied(ctx, dst); err != nil {
		t.Errorf("a finished, verified copy: %v", err)
	}
}

// TestFreshDatabaseIsNotAnUnfinishedCopy: a new, empty database (on
// PostgreSQL every bucket name reads as an empty bucket) holds no copy,
// so CheckCopied lets the server start on it.
func TestFreshDatabaseIsNotAnUnfinishedCopy(t *testing.T) {
	ctx := context.Background()
	for name, db := range map[string]string{
		"postgres": pgtest.Database(t),
		"bbolt":    filepath.Join(t.TempDir(), "new.db"),
	} {
		d, err := store.OpenDB(ctx, db, store.DBOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := store.CheckCopied(ctx, d); err != nil {
			t.Errorf("%s: a fresh database: %v", name, err)
		}
		d.Close()
	}
}

// dumpDB returns every bucket of db with its sequence and every key and
// value, as text.
func dumpDB(t *testing.T, db store.DB) string {
	t.Helper()
	var b strings.Builder
	if err := db.View(context.Background(), func(tx backend.Tx) error {
		return tx.ForEach(func(name []byte, bk backend.Bucket) error {
			if string(name) == "migrate_progress" {
				return nil // the copy's own record, in the copy only
			}
			fmt.Fprintf(&b, "%s seq=%d\n", name, bk.Sequence())
			return bk.ForEach(func(k, v []byte) error {
				fmt.Fprintf(&b, "  %q=%q\n", k, v)
				return nil
			})
		})
	}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestMigrateEveryDirection: `p2pserver migrate` copies from a bbolt file
// or a PostgreSQL database into a bbolt file or a PostgreSQL database
// (bbolt to PostgreSQL to scale out, PostgreSQL to bbolt as the way back,
// bbolt to bbolt as a compact copy), byte for byte: every bucket, key and
// sequence, and the copy serves the resource's versions. Every other -from
// or -to (another scheme, none, a file that is not there, a database with
// no p2pserver data in it, the same database on both sides) is refused
// with a message naming the flag, before anything is written.
func TestMigrateEveryDirection(t *testing.T) {
	ctx := context.Background()
	reg := search.NewRegistry(spec.R4())
	fill := func(dsn string) string {
		db, err := store.OpenDB(ctx, dsn, store.DBOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		st, err := store.Open(db, reg, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, body := range []string{`{"resourceType":"Patient","id":"p1","birthDate":"1990-01-01"}`, `{"resourceType":"Patient","id":"p1","birthDate":"1990-01-02"}`} {
			var m map[string]any
			if err := json.Unmarshal([]byte(body), &m); err != nil {
				t.Fatal(err)
			}
			if err := st.Write(ctx, func(tx *store.Tx) error {
				_, err := tx.Put(&store.Doc{Type: "Patient", ID: "p1", Map: m, JSON: []byte(body)}, store.PutOptions{})
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
		if err := st.Write(ctx, func(tx *store.Tx) error {
			jobs := tx.KV("jobs")
			for range 3 {
				n, err := jobs.NextSequence()
				if err != nil {
					return err
				}
				if err := jobs.Put(fmt.Appendf(nil, "%08d", n), []byte(`{"status":"COMPLETED"}`)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		st.Close()
		return dumpDB(t, db)
	}
	dir := t.TempDir()
	boltSrc := filepath.Join(dir, "src.db")
	pgSrc := pgtest.Database(t)
	want := map[string]string{boltSrc: fill(boltSrc), pgSrc: fill(pgSrc)}
	emptyPG := pgtest.Database(t)
	notThere := filepath.Join(dir, "not-there.db")
	n := 0
	newBolt := func() string { n++; return filepath.Join(dir, fmt.Sprintf("copy%d.db", n)) }

	kinds := []string{"bbolt", "postgres", "other scheme", "missing"}
	for _, fromKind := range kinds {
		for _, toKind := range kinds {
			t.Run(fromKind+" to "+toKind, func(t *testing.T) {
				from := map[string]string{"bbolt": boltSrc, "postgres": pgSrc, "other scheme": "mysql://db.internal/p2p", "missing": ""}[fromKind]
				to := map[string]string{"bbolt": newBolt(), "postgres": pgtest.Database(t), "other scheme": "sqlite:///var/p2p.db", "missing": ""}[toKind]
				var out bytes.Buffer
				err := runMigrate(ctx, []string{"-from", from, "-to", to, "-quiet"}, &out)
				ok := (fromKind == "bbolt" || fromKind == "postgres") && (toKind == "bbolt" || toKind == "postgres")
				if !ok {
					var refusal string
					switch {
					case fromKind == "missing" || toKind == "missing":
						refusal = "-from and -to are both required"
					case fromKind == "other scheme":
						refusal = "-from: mysql://… is no kind of database"
					default:
						refusal = "-to: sqlite://… is no kind of database"
					}
					if err == nil || !strings.Contains(err.Error(), refusal) {
						t.Fatalf("migrate -from %q -to %q: %v; want a refusal %q", from, to, err, refusal)
					}
					if toKind == "bbolt" {
						if _, err := os.Stat(to); !errors.Is(err, os.ErrNotExist) {
							t.Errorf("a refused migrate made %s", to)
						}
					}
					return
				}
				if err != nil {
					t.Fatalf("migrate -from %s -to %s: %v\n%s", fromKind, toKind, err, out.String())
				}
				if !strings.Contains(out.String(), "complete and verified") {
					t.Errorf("output:\n%s", out.String())
				}
				db, err := store.OpenDB(ctx, to, store.DBOptions{})
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				if got := dumpDB(t, db); got != want[from] {
					t.Errorf("the copy holds\n%s\nthe original\n%s", got, want[from])
				}
				if err := store.CheckCopied(ctx, db); err != nil {
					t.Errorf("the copy: %v", err)
				}
				st, err := store.Open(db, reg, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				if err := st.View(ctx, func(tx *store.Tx) error {
					v, err := tx.Read("Patient", "p1")
					if err != nil {
						return err
					}
					if v.VersionID != 2 {
						t.Errorf("Patient/p1 is at version %d in the copy, want 2", v.VersionID)
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
			})
		}
	}

	for _, c := range []struct{ name, from, to, refusal string }{
		{"a bbolt file that is not there", notThere, newBolt(), "-from: " + notThere + " is not a database file"},
		{"a PostgreSQL database with no p2pserver data", emptyPG, newBolt(), "holds no p2pserver database"},
		{"the same bbolt file", boltSrc, boltSrc, "the same database"},
		{"the same bbolt file by another path", boltSrc, dir + "/./x/../src.db", "the same database"},
		{"the same PostgreSQL database", pgSrc, pgSrc, "the same database"},
		{"a PostgreSQL database holding other data", boltSrc, pgSrc, "-to: the database copied to is not empty"},
		{"a bbolt file holding other data", pgSrc, boltSrc, "-to: the database copied to is not empty"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			err := runMigrate(ctx, []string{"-from", c.from, "-to", c.to}, &out)
			if err == nil || !strings.Contains(err.Error(), c.refusal) {
				t.Fatalf("migrate -from %s -to %s: %v; want %q", c.from, c.to, err, c.refusal)
			}
			// Running a refused command again changes nothing: the
			// refusal must not say it would go on.
			if strings.Contains(err.Error(), "run the same command again") {
				t.Errorf("the refusal %q tells to run the same command again", err)
			}
		})
	}
	// The sources are as they were.
	for dsn, w := range want {
		db, err := store.OpenDB(ctx, dsn, store.DBOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := dumpDB(t, db); got != w {
			t.Errorf("%s changed:\n%s", store.RedactDSN(dsn), got)
		}
		db.Close()
	}
}
