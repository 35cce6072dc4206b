// Command p2pload measures a running p2pserver over HTTP on loopback: it
// loads a database of synthetic Patients and Observations with single
// creates, then reads and searches it, and prints requests per second and
// latency percentiles for each phase.
//
// With -server it starts that p2pserver binary itself on a free loopback
// port with a fresh database in a temporary folder, and stops it at the end.
// Every phase is bounded in requests and time.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	var (
		base        = flag.String("url", "", "FHIR base URL of a running server (loopback only), e.g. http://127.0.0.1:8080/fhir")
		server      = flag.String("server", "", "path to a p2pserver binary to start for the run instead of -url")
		resources   = flag.Int("resources", 100000, "resources to create (one Patient per 10)")
		concurrency = flag.Int("c", 32, "concurrent clients")
		duration    = flag.Duration("d", 10*time.Second, "duration of the read and search phases")
		limits      = flag.Bool("limits", false, "with -server: measure what expensive requests cost the others (a 10,000-entry transaction, long-query searches, 2,000 matching Subscriptions) instead of the load run")
	)
	flag.Parse()
	if *limits {
		if *server == "" {
			fmt.Fprintln(os.Stderr, "p2pload: -limits needs -server")
			os.Exit(2)
		}
		if err := runLimits(*server, 16, *duration); err != nil {
			fmt.Fprintln(os.Stderr, "p2pload:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*base, *server, *resources, *concurrency, *duration); err != nil {
		fmt.Fprintln(os.Stderr, "p2pload:", err)
		os.Exit(1)
	}
}

func run(base, server string, n, c int, d time.Duration) error {
	if server != "" {
		stop, b, err := spawn(server)
		if err != nil {
			return err
		}
		defer stop()
		base = b
	}
	if base == "" {
		return errors.New("give -url of a running server or -server to start one")
	}
	u, err := url.Parse(base)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(u.Hostname()); u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("refusing to load %s: only loopback servers are measured", u.Host)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: c * 2}, Timeout: 30 * time.Second}
	l := &loader{base: strings.TrimRight(base, "/"), client: client}

	patients := max(n/10, 1)
	observations := n - patients
	fmt.Printf("p2pserver load: %d resources (%d Patients, %d Observations), %d clients, %s per phase, GOMAXPROCS of client shares the machine\n",
		n, patients, observations, c, d)

	patientIDs := make([]string, patients)
	st, err := l.phase("create Patient", c, patients, 0, func(i int) (string, error) {
		id, err := l.create("Patient", patientJSON(i))
		patientIDs[i] = id
		return id, err
	})
	if err != nil {
		return err
	}
	st.print()
	obsIDs := make([]string, observations)
	st, err = l.phase("create Observation", c, observations, 0, func(i int) (string, error) {
		id, err := l.create("Observation", observationJSON(i, patientIDs[i%patients]))
		obsIDs[i] = id
		return id, err
	})
	if err != nil {
		return err
	}
	st.print()
	st, err = l.phase("read Observation", c, 0, d, func(i int) (string, error) {
		return "", l.get("/Observation/" + obsIDs[rand.IntN(len(obsIDs))])
	})
	if err != nil {
		return err
	}
	st.print()
	st, err = l.phase("search Observation?code (~"+fmt.Sprint(observations/codes)+" hits, page of 20)", c, 0, d, func(i int) (string, error) {
		return "", l.get(fmt.Sprintf("/Observation?code=urn:load|c%d&_count=20", rand.IntN(codes)))
	})
	if err != nil {
		return err
	}
	st.print()
	st, err = l.phase("search Patient?family (prefix, ~10 hits)", c, 0, d, func(i int) (string, error) {
		return "", l.get(fmt.Sprintf("/Patient?family=fam%d&_count=20", rand.IntN(max(patients/10, 1))))
	})
	if err != nil {
		return err
	}
	st.print()
	st, err = l.phase("search Observation?subject+date", c, 0, d, func(i int) (string, error) {
		return "", l.get(fmt.Sprintf("/Observation?subject=Patient/%s&date=ge2020-01-01", patientIDs[rand.IntN(patients)]))
	})
	if err != nil {
		return err
	}
	st.print()
	return nil
}

const codes = 1000

func patientJSON(i int) []byte {
	return []byte(fmt.Sprintf(`{"resourceType":"Patient","identifier":[{"system":"urn:load:member","value":"m%d"}],"name":[{"family":"Fam%d","given":["Given%d"]}],"gender":"%s","birthDate":"%d-%02d-%02d"}`,
		i, i/10, i, []string{"male", "female"}[i%2], 1940+i%60, 1+i%12, 1+i%28))
}

func observationJSON(i int, patient string) []byte {
	return []byte(fmt.Sprintf(`{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"urn:load","code":"c%d","display":"Load code %d"}]},"subject":{"reference":"Patient/%s"},"effectiveDateTime":"20%02d-%02d-%02dT10:00:00Z","valueQuantity":{"value":%d.%d,"unit":"mg","system":"http://unitsofmeasure.org","code":"mg"}}`,
		i%codes, i%codes, patient, 15+i%10, 1+i%12, 1+i%28, i%300, i%10))
}

type loader struct {
	base   string
	client *http.Client
}

func (l *loader) create(typ string, body []byte) (string, error) {
	resp, err := l.client.Post(l.base+"/"+typ, "application/fhir+json", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("create %s: %d %.200s", typ, resp.StatusCode, b)
	}
	var r struct{ ID string }
	if err := json.Unmarshal(b, &r); err != nil {
		return "", err
	}
	return r.ID, nil
}

func (l *loader) get(path string) error {
	resp, err := l.client.Get(l.base + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %.200s", path, resp.StatusCode, b)
	}
	return nil
}

type stats struct {
	name    string
	n       int
	elapsed time.Duration
	lat     []time.Duration
}

func (s *stats) print() {
	slices.Sort(s.lat)
	pct := func(p float64) time.Duration {
		if len(s.lat) == 0 {
			return 0
		}
		return s.lat[min(len(s.lat)-1, int(float64(len(s.lat))*p))]
	}
	fmt.Printf("%-58s %8d req %9.0f req/s  p50 %8s  p99 %8s\n", s.name, s.n, float64(s.n)/s.elapsed.Seconds(),
		pct(0.50).Round(time.Microsecond), pct(0.99).Round(time.Microsecond))
}

// phase runs f with c workers, count times (or, with count 0, until d has
// passed), and records each call's latency. The first error stops it.
func (l *loader) phase(name string, c, count int, d time.Duration, f func(i int) (string, error)) (*stats, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if count == 0 {
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	var next atomic.Int64
	var mu sync.Mutex
	var firstErr error
	lats := make([][]time.Duration, c)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if count > 0 && i >= count {
					return
				}
				t0 := time.Now()
				_, err := f(i)
				lats[w] = append(lats[w], time.Since(t0))
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	st := &stats{name: name, elapsed: time.Since(start)}
	for _, l := range lats {
		st.lat = append(st.lat, l...)
	}
	st.n = len(st.lat)
	return st, firstErr
}

// spawn starts a p2pserver on a free loopback port with a new database and
// returns a function that stops it and removes the database.
func spawn(bin string, args ...string) (func(), string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	addr := ln.Addr().String()
	ln.Close()
	dir, err := os.MkdirTemp("", "p2pload")
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command(bin, append([]string{"-addr", addr, "-db", filepath.Join(dir, "load.db"), "-log-level", "warn"}, args...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, "", err
	}
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		if fi, err := os.Stat(filepath.Join(dir, "load.db")); err == nil {
			fmt.Printf("database size: %.1f MiB\n", float64(fi.Size())/(1<<20))
		}
		os.RemoveAll(dir)
	}
	base := "http://" + addr
	for range 100 {
		if resp, err := http.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return stop, base + "/fhir", nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	stop()
	return nil, "", errors.New("the server did not become healthy in 10s")
}
