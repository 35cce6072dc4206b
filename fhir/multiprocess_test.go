package fhir_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/p2pserver/p2pserver/internal/pgtest"
)

// TestConditionalCreateExactlyOnceAcrossProcesses: two servers (two
// processes' worth: two stores, two connection pools) on one PostgreSQL
// database race conditional creates of the same Patient. FHIR R4
// http.html#ccreate: with no match the server creates, with one it
// creates nothing and answers 200 OK; so exactly one create wins and
// every other request answers the resource it made.
func TestConditionalCreateExactlyOnceAcrossProcesses(t *testing.T) {
	dsn := pgtest.Database(t)
	servers := []*testServer{newServerOn(t, dsn), newServerOn(t, dsn)}
	for round := range 20 {
		raceConditionalCreate(t, servers, fmt.Sprint(round))
	}
}

func raceConditionalCreate(t *testing.T, servers []*testServer, value string) {
	t.Helper()
	const perServer = 6
	body := `{"resourceType":"Patient","identifier":[{"system":"urn:race","value":"` + value + `"}]}`
	type answer struct {
		status int
		id     string
		err    error
	}
	answers := make(chan answer, 2*perServer)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for _, ts := range servers {
		for range perServer {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				req, _ := http.NewRequest(http.MethodPost, ts.URL+"/Patient", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/fhir+json")
				req.Header.Set("If-None-Exist", "identifier=urn:race|"+value)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					answers <- answer{err: err}
					return
				}
				defer resp.Body.Close()
				var p struct{ ID string }
				err = json.NewDecoder(resp.Body).Decode(&p)
				answers <- answer{status: resp.StatusCode, id: p.ID, err: err}
			}()
		}
	}
	close(start)
	wg.Wait()
	close(answers)
	created := 0
	ids := map[string]bool{}
	for a := range answers {
		if a.err != nil {
			t.Fatal(a.err)
		}
		switch a.status {
		case http.StatusCreated:
			created++
		case http.StatusOK:
		default:
			t.Errorf("answer %d", a.status)
		}
		ids[a.id] = true
	}
	if created != 1 || len(ids) != 1 {
		t.Errorf("identifier %s: %d creates answered 201, ids %v; want exactly one resource", value, created, ids)
	}
	for i, ts := range servers {
		r := ts.do(http.MethodGet, "/Patient?identifier=urn:race|"+value, nil).want(t, http.StatusOK)
		if fmt.Sprint(r.JSON["total"]) != "1" {
			t.Errorf("server %d finds %v Patients with identifier %s, want 1", i, r.JSON["total"], value)
		}
	}
}
