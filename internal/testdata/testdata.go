// Package testdata locates the outside example data kept in the repository's
// top-level testdata/ folder (HL7 US Core and Da Vinci PDex examples, Synthea
// patient bundles, the FHIR R4 definition files), so that every package's
// tests find it from wherever `go test` runs them. Its licences are in
// testdata/README.md.
package testdata

import (
	"path/filepath"
	"runtime"
	"testing"
)

// Dir is the absolute path of the repository's testdata/ folder.
var Dir = func() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata")
}()

// Path joins elem onto Dir: Path("pdex", "Patient-1-2.json").
func Path(elem ...string) string {
	return filepath.Join(append([]string{Dir}, elem...)...)
}

// Glob returns the files matching pattern under Dir (for example
// "synthea/Angelic_Mueller*.json"), in name order. A pattern that matches
// nothing fails the test with the path it looked in: a test that silently
// ran over no data would prove nothing.
func Glob(tb testing.TB, pattern string) []string {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join(Dir, pattern))
	if err != nil {
		tb.Fatalf("testdata: bad pattern %q: %v", pattern, err)
	}
	if len(files) == 0 {
		tb.Fatalf("testdata: no file matches %s (the repository's testdata/ folder is incomplete)", filepath.Join(Dir, pattern))
	}
	return files
}
