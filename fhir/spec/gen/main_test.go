package main

import (
	"bytes"
	td "github.com/p2pserver/p2pserver/internal/testdata"
	"os"
	"path/filepath"
	"testing"
)

// The embedded files must be what the generator makes of the shared
// definitions today: a hand edit or a forgotten `make spec` fails here.
func TestEmbeddedFilesAreUpToDate(t *testing.T) {
	if testing.Short() {
		t.Skip("regenerates the whole schema")
	}
	out := t.TempDir()
	if err := run(td.Path("fhir-r4"), out); err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join(out, "*.json"))
	if err != nil || len(files) != 6 {
		t.Fatalf("generator wrote %v (%v), want 6 files", files, err)
	}
	for _, f := range files {
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join("..", "data", filepath.Base(f)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("data/%s differs from the generator's output; run make spec", filepath.Base(f))
		}
	}
}
