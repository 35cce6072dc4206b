// Command gendict builds the zstd dictionary whose content the store
// compresses stored resources with (as an S2 dictionary; records written
// earlier are zstd frames naming it), from FHIR resources: every entry of
// the Bundles (or the resource itself) of the JSON files in -in, compacted.
//
// A dictionary is frozen once a release has written records with it:
// records name their dictionary by ID, and the store must keep every
// dictionary it ever wrote with. A new dictionary gets a new -id and is
// added beside the old one, never in its place.
//
//	go run ./fhir/store/gendict -in testdata/synthea -id 32769 -out fhir/store/dict/fhir-r4-32769.zdict
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/klauspost/compress/dict"
)

func main() {
	in := flag.String("in", "testdata/synthea", "folder of FHIR JSON files (Bundles or resources)")
	out := flag.String("out", "", "dictionary file to write")
	id := flag.Uint("id", 0, "dictionary ID (32768 or above; never one already released)")
	size := flag.Int("size", 16<<10, "dictionary size in bytes")
	flag.Parse()
	if *out == "" || *id < 32768 {
		fmt.Fprintln(os.Stderr, "gendict: give -out and an -id of 32768 or above")
		os.Exit(2)
	}
	files, err := filepath.Glob(filepath.Join(*in, "*.json"))
	if err != nil || len(files) == 0 {
		fmt.Fprintf(os.Stderr, "gendict: no JSON files in %s\n", *in)
		os.Exit(1)
	}
	slices.Sort(files)
	var samples [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, "gendict:", err)
			os.Exit(1)
		}
		var bundle struct {
			ResourceType string
			Entry        []struct{ Resource json.RawMessage }
		}
		if err := json.Unmarshal(b, &bundle); err != nil {
			continue
		}
		raws := []json.RawMessage{b}
		if bundle.ResourceType == "Bundle" {
			raws = raws[:0]
			for _, e := range bundle.Entry {
				raws = append(raws, e.Resource)
			}
		}
		for _, r := range raws {
			var c bytes.Buffer
			if json.Compact(&c, r) == nil && c.Len() > 0 {
				samples = append(samples, c.Bytes())
			}
		}
	}
	d, err := dict.BuildZstdDict(samples, dict.Options{MaxDictSize: *size, HashBytes: 6, ZstdDictID: uint32(*id)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "gendict:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, d, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gendict:", err)
		os.Exit(1)
	}
	fmt.Printf("gendict: %d samples from %d files, %d-byte dictionary %d written to %s\n", len(samples), len(files), len(d), *id, *out)
}
