package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestAcknowledgedWritesSurviveKill9: p2pserver (the binary) takes
// creates from 32 clients, grouped into shared commits, and transaction
// Bundles of 600 entries (committed on their own), and is killed with
// SIGKILL while they go on. Started again on the same database, every
// create it answered 201 is there and found by its index entries, and
// every transaction is there whole if it was answered 200, and otherwise
// whole or not at all (FHIR R4 http.html#transaction: all or nothing).
func TestAcknowledgedWritesSurviveKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildP2PServer(t)
	db := filepath.Join(t.TempDir(), "kill.db")
	child := startChild(t, bin, "-db", db, "-log-level", "warn")
	base := child.URL + "/fhir"
	client := &http.Client{Timeout: time.Minute}

	var mu sync.Mutex
	var acked []string        // "Patient/id" answered 201
	txAcked := map[int]bool{} // transactions answered 200
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf(`{"resourceType":"Patient","identifier":[{"system":"urn:kill","value":"w%d-%d"}],"name":[{"family":"Kill%d"}]}`, w, i, w)
				resp, err := client.Post(base+"/Patient", "application/fhir+json", strings.NewReader(body))
				if err != nil {
					return // the server is gone
				}
				var r struct{ ID string }
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &r) != nil || r.ID == "" {
					continue
				}
				mu.Lock()
				acked = append(acked, fmt.Sprintf("w%d-%d|%s", w, i, r.ID))
				mu.Unlock()
			}
		}()
	}
	const txEntries = 600
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := client.Post(base, "application/fhir+json", bytes.NewReader(killTransaction(n, txEntries)))
			if err != nil {
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				mu.Lock()
				txAcked[n] = true
				mu.Unlock()
			}
		}
	}()
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		enough := len(acked) >= 300 && len(txAcked) >= 1
		mu.Unlock()
		if enough {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("too few writes acknowledged in a minute")
		}
		time.Sleep(20 * time.Millisecond)
	}
	child.kill9() // writes and a transaction in flight
	close(stop)
	wg.Wait()
	child.start()
	defer child.term()

	get := func(path string) (int, map[string]any) {
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	total := func(path string) int {
		code, m := get(path)
		if code != http.StatusOK {
			t.Fatalf("GET %s: %d %v", path, code, m)
		}
		n, _ := m["total"].(float64)
		return int(n)
	}
	for _, a := range acked {
		value, id, _ := strings.Cut(a, "|")
		if code, m := get("/Patient/" + id); code != http.StatusOK {
			t.Errorf("acknowledged Patient/%s: %d %v", id, code, m)
		}
		if n := total("/Patient?identifier=urn:kill|" + value + "&_total=accurate"); n != 1 {
			t.Errorf("acknowledged Patient/%s: its identifier finds %d", id, n)
		}
	}
	for n := 0; ; n++ {
		got := total(fmt.Sprintf("/Observation?code=urn:kill-tx|t%d&_total=accurate&_count=1", n))
		if got == 0 && !txAcked[n] {
			if n > len(txAcked)+1 {
				break // past the last transaction sent
			}
			continue
		}
		if want := txEntries - txEntries/10; got != want {
			t.Errorf("transaction %d (answered 200: %v): %d of its %d Observations", n, txAcked[n], got, want)
		}
	}
	t.Logf("%d creates and %d transactions acknowledged before the kill", len(acked), len(txAcked))
}

// killTransaction is a transaction of n entries: a Patient then nine
// Observations referring to it by urn:uuid, each coded with the
// transaction's number.
func killTransaction(tx, n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"resourceType":"Bundle","type":"transaction","entry":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		if i%10 == 0 {
			fmt.Fprintf(&b, `{"fullUrl":"urn:uuid:00000000-0000-4000-8000-%012d","resource":{"resourceType":"Patient","name":[{"family":"Tx%d"}]},"request":{"method":"POST","url":"Patient"}}`, i, tx)
			continue
		}
		fmt.Fprintf(&b, `{"fullUrl":"urn:uuid:00000000-0000-4000-8000-%012d","resource":{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:kill-tx","code":"t%d"}]},"subject":{"reference":"urn:uuid:00000000-0000-4000-8000-%012d"}},"request":{"method":"POST","url":"Observation"}}`, i, tx, i-i%10)
	}
	b.WriteString("]}")
	return b.Bytes()
}
