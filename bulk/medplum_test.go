package bulk

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// medplumDir holds the outside Bulk Data client: package.json and
// package-lock.json pin @medplum/core; export.mjs drives it.
const medplumDir = "testdata/medplum-client"

// medplumClient makes sure node and the pinned @medplum/core are there
// (npm ci into the test folder when node_modules is missing) and returns
// the node binary; it skips the test when node is not installed.
func medplumClient(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: the outside Bulk Data client (@medplum/core) runs on node; install node and npm to run this test")
	}
	if _, err := os.Stat(filepath.Join(medplumDir, "node_modules", "@medplum", "core", "package.json")); err != nil {
		npm, err := exec.LookPath("npm")
		if err != nil {
			t.Fatalf("node is installed but npm is not, and %s/node_modules is missing: run npm ci there", medplumDir)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund")
		cmd.Dir = medplumDir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci in %s: %v\n%s", medplumDir, err, out)
		}
	}
	return node
}

// An outside Bulk Data client drives an export end to end: Medplum's
// MedplumClient.bulkExport kicks off (POST with Prefer: respond-async),
// polls the status URL until the manifest, and the files are downloaded
// with the client's SMART Backend Services token (Bulk Data Access STU 2).
func TestMedplumBulkExport(t *testing.T) {
	node := medplumClient(t)
	t.Parallel()
	idp := oidctest.New(t)
	p := newPayer(t, idp, Config{Slice: 2})
	loadBasic(p)
	_, tok := p.backend("medplum-payer", "system/*.rs")
	for _, c := range []struct {
		name, level, types string
		want               []string
	}{
		{"system", "", "Patient,Observation", []string{"Observation/a1", "Observation/a2", "Observation/b1", "Patient/a", "Patient/b"}},
		{"group", "Group/ga", "", []string{"Encounter/ea", "Observation/a1", "Observation/a2", "Patient/a"}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		// Node 20 has WebSocket (which @medplum/core 5 expects as a
		// global) behind a flag; later versions ignore it.
		cmd := exec.CommandContext(ctx, node, "--experimental-websocket", "export.mjs")
		cmd.Dir = medplumDir
		cmd.Env = append(os.Environ(), "P2P_FHIR_BASE="+p.URL, "P2P_TOKEN="+tok, "P2P_EXPORT_LEVEL="+c.level, "P2P_EXPORT_TYPES="+c.types)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		cancel()
		if err != nil {
			msg := stderr.String()
			if len(msg) > 2000 {
				msg = msg[len(msg)-2000:]
			}
			t.Fatalf("%s: the Medplum client failed: %v\n%s", c.name, err, msg)
		}
		var res struct {
			Manifest Manifest `json:"manifest"`
			Files    []struct {
				Type        string   `json:"type"`
				Count       int64    `json:"count"`
				Lines       int64    `json:"lines"`
				ContentType string   `json:"contentType"`
				IDs         []string `json:"ids"`
			} `json:"files"`
		}
		if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
			t.Fatalf("%s: %v: %s", c.name, err, stdout.String())
		}
		var got []string
		for _, f := range res.Files {
			if f.Count != f.Lines || f.ContentType != NDJSON {
				t.Errorf("%s: %s file: count %d, %d lines, Content-Type %q", c.name, f.Type, f.Count, f.Lines, f.ContentType)
			}
			got = append(got, f.IDs...)
		}
		sort.Strings(got)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: the Medplum client got %v, want %v", c.name, got, c.want)
		}
		if !res.Manifest.RequiresAccessToken || res.Manifest.TransactionTime == "" {
			t.Errorf("%s: manifest as the client read it: %+v", c.name, res.Manifest)
		}
	}
}
