package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// fhirCall is one FHIR request from a client goroutine: status, ETag
// and body (it reports transport errors with t.Error, never Fatal).
func fhirCall(t *testing.T, base, method, path string, headers map[string]string, body string) (int, string, map[string]any) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, base+path, rd)
	req.Header.Set("Authorization", "Bearer "+testAdmin)
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Error(err)
		return 0, "", nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, resp.Header.Get("ETag"), out
}

// TestTwoProcessesWriteAndReadAsOne: two p2pserver processes on one
// PostgreSQL database, many clients at once on both (so that writes
// share commit groups), behave as one server (FHIR R4 http.html): a
// conditional create (If-None-Exist) makes one resource whichever
// process each client reaches; a read on either process sees every write
// acknowledged before it (no stale snapshot from a parked read
// transaction); If-Match updates never both succeed on one version; a
// delete is seen by the other process; and no session stays idle in a
// transaction for long meanwhile.
func TestTwoProcessesWriteAndReadAsOne(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs two servers")
	}
	bin := buildP2PServer(t)
	dsn := pgtest.Database(t)
	args := []string{"-db", dsn, "-secret-key", testSecretKey, "-admin-token", testAdmin, "-base-url", "http://p2p.example", "-log-level", "warn"}
	procs := []string{startChild(t, bin, args...).URL, startChild(t, bin, args...).URL}
	ctx := context.Background()

	// Sessions idle in a transaction for over a second, sampled all along.
	stop := make(chan struct{})
	var stuck, maxIdleInTx atomic.Int64
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close(ctx)
		for {
			var n, old int64
			if err := conn.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE now() - state_change > interval '1 second')
	FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction'`).Scan(&n, &old); err == nil {
				stuck.Add(old)
				if n > maxIdleInTx.Load() {
					maxIdleInTx.Store(n)
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	const clients = 16
	rows := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"conditional create on both processes makes one resource", func(t *testing.T) {
			var created [3]atomic.Int64
			var wg sync.WaitGroup
			for c := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for k := range created {
						body := fmt.Sprintf(`{"resourceType":"Patient","identifier":[{"system":"urn:once","value":"k%d"}],"gender":"other"}`, k)
						st, _, out := fhirCall(t, procs[(c+k)%2], "POST", "/fhir/Patient", map[string]string{"If-None-Exist": fmt.Sprintf("identifier=urn:once|k%d", k)}, body)
						switch st {
						case 201:
							created[k].Add(1)
						case 200:
						default:
							t.Errorf("conditional create k%d: %d %v", k, st, out)
						}
					}
				}()
			}
			wg.Wait()
			for k := range created {
				if n := created[k].Load(); n != 1 {
					t.Errorf("k%d: %d creates answered 201, want 1", k, n)
				}
				for _, p := range procs {
					_, _, out := fhirCall(t, p, "GET", fmt.Sprintf("/fhir/Patient?identifier=urn:once|k%d", k), nil, "")
					if total, _ := out["total"].(float64); total != 1 {
						t.Errorf("k%d on %s: %v resources, want 1", k, p, out["total"])
					}
				}
			}
		}},
		{"a read on the other process sees the write just acknowledged", func(t *testing.T) {
			var wg sync.WaitGroup
			for c := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					id := fmt.Sprintf("ryw-%d", c)
					for i := range 15 {
						w, r := procs[(c+i)%2], procs[(c+i+1)%2]
						st, etag, out := fhirCall(t, w, "PUT", "/fhir/Patient/"+id, nil, fmt.Sprintf(`{"resourceType":"Patient","id":"%s","birthDate":"2000-01-%02d"}`, id, 1+i))
						if st != 200 && st != 201 {
							t.Errorf("PUT %s: %d %v", id, st, out)
							return
						}
						st, got, out := fhirCall(t, r, "GET", "/fhir/Patient/"+id, nil, "")
						if st != 200 || got != etag || out["birthDate"] != fmt.Sprintf("2000-01-%02d", 1+i) {
							t.Errorf("GET %s on the other process after a PUT answered %s: %d %s %v", id, etag, st, got, out["birthDate"])
						}
					}
				}()
			}
			wg.Wait()
		}},
		{"If-Match updates on both processes: one success per version", func(t *testing.T) {
			if st, _, out := fhirCall(t, procs[0], "PUT", "/fhir/Patient/race", nil, `{"resourceType":"Patient","id":"race"}`); st != 201 && st != 200 {
				t.Fatalf("PUT race: %d %v", st, out)
			}
			var mu sync.Mutex
			won := map[string]int{}
			var wg sync.WaitGroup
			for c := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 8 {
						p := procs[(c+i)%2]
						_, etag, _ := fhirCall(t, p, "GET", "/fhir/Patient/race", nil, "")
						st, _, out := fhirCall(t, procs[(c+i+1)%2], "PUT", "/fhir/Patient/race", map[string]string{"If-Match": etag},
							fmt.Sprintf(`{"resourceType":"Patient","id":"race","birthDate":"1990-01-%02d"}`, 1+c))
						switch st {
						case 200:
							mu.Lock()
							won[etag]++
							mu.Unlock()
						case 412, 409:
						default:
							t.Errorf("PUT If-Match %s: %d %v", etag, st, out)
						}
					}
				}()
			}
			wg.Wait()
			for etag, n := range won {
				if n != 1 {
					t.Errorf("If-Match %s: %d updates succeeded, want 1", etag, n)
				}
			}
			_, etag, _ := fhirCall(t, procs[1], "GET", "/fhir/Patient/race", nil, "")
			if want := fmt.Sprintf(`W/"%d"`, 1+len(won)); etag != want {
				t.Errorf("after %d updates: %s, want %s", len(won), etag, want)
			}
		}},
		{"a delete on one process is seen by the other", func(t *testing.T) {
			var wg sync.WaitGroup
			for c := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					id := fmt.Sprintf("del-%d", c)
					if st, _, out := fhirCall(t, procs[c%2], "PUT", "/fhir/Patient/"+id, nil, fmt.Sprintf(`{"resourceType":"Patient","id":"%s"}`, id)); st != 201 {
						t.Errorf("PUT %s: %d %v", id, st, out)
					}
					if st, _, out := fhirCall(t, procs[(c+1)%2], "DELETE", "/fhir/Patient/"+id, nil, ""); st != 200 && st != 204 {
						t.Errorf("DELETE %s: %d %v", id, st, out)
					}
					if st, _, _ := fhirCall(t, procs[c%2], "GET", "/fhir/Patient/"+id, nil, ""); st != 410 {
						t.Errorf("GET %s after its delete on the other process: %d, want 410", id, st)
					}
				}()
			}
			wg.Wait()
		}},
		{"transaction Bundles on both processes: one conditional create, every version in history once", func(t *testing.T) {
			var created atomic.Int64
			var wg sync.WaitGroup
			for c := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 5 {
						id := fmt.Sprintf("tb-%d", c)
						bundle := fmt.Sprintf(`{"resourceType":"Bundle","type":"transaction","entry":[
{"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=urn:bundle|shared"},"resource":{"resourceType":"Patient","identifier":[{"system":"urn:bundle","value":"shared"}]}},
{"request":{"method":"PUT","url":"Patient/%s"},"resource":{"resourceType":"Patient","id":"%s","birthDate":"2001-01-%02d"}},
{"request":{"method":"POST","url":"Observation"},"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/%s"}}}]}`, id, id, 1+i, id)
						st, _, out := fhirCall(t, procs[(c+i)%2], "POST", "/fhir", nil, bundle)
						if st != 200 {
							t.Errorf("transaction: %d %v", st, out)
							continue
						}
						entries, _ := out["entry"].([]any)
						if len(entries) != 3 {
							t.Errorf("transaction: %d entries answered", len(entries))
							continue
						}
						resp, _ := entries[0].(map[string]any)["response"].(map[string]any)
						if s, _ := resp["status"].(string); strings.HasPrefix(s, "201") {
							created.Add(1)
						}
						_, _, got := fhirCall(t, procs[(c+i+1)%2], "GET", "/fhir/Patient/"+id, nil, "")
						if got["birthDate"] != fmt.Sprintf("2001-01-%02d", 1+i) {
							t.Errorf("Patient/%s on the other process after its transaction: %v", id, got["birthDate"])
						}
					}
				}()
			}
			wg.Wait()
			if n := created.Load(); n != 1 {
				t.Errorf("the conditional create of the transactions made %d resources, want 1", n)
			}
			// Every Observation written is in the type's history once.
			for _, p := range procs {
				_, _, out := fhirCall(t, p, "GET", "/fhir/Observation/_history?_count=1000", nil, "")
				entries, _ := out["entry"].([]any)
				seen := map[string]bool{}
				for _, e := range entries {
					r, _ := e.(map[string]any)["resource"].(map[string]any)
					seen[fmt.Sprint(r["id"])] = true
				}
				if len(entries) != clients*5 || len(seen) != clients*5 {
					t.Errorf("Observation history on %s: %d entries, %d ids, want %d", p, len(entries), len(seen), clients*5)
				}
			}
		}},
	}
	for _, row := range rows {
		t.Run(row.name, row.run)
	}
	close(stop)
	<-sampled
	t.Logf("sessions idle in a transaction at once, at most: %d", maxIdleInTx.Load())
	if n := stuck.Load(); n != 0 {
		t.Errorf("%d samples found a session idle in a transaction for over a second", n)
	}
}
