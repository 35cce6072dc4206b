package provenance_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/provenance"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func page(versioned bool) provenance.IngestedPage {
	return provenance.IngestedPage{
		ID:                   "batch-12-page-3",
		Recorded:             time.Date(2024, 5, 9, 20, 36, 18, 111e6, time.UTC),
		PageURL:              "https://payer-a.example/fhir/ExplanationOfBenefit?_cursor=abc.20",
		Description:          "page 3 of batch job 12",
		SourceName:           "Payer A",
		SourceOrganizationID: "ABCDE",
		Resources: []provenance.IngestedResource{
			{Type: "ExplanationOfBenefit", ID: "e1", Version: 2},
			{Type: "Patient", ID: "p1", Version: 1},
			{Type: "ExplanationOfBenefit", ID: "e1", Version: 2}, // the same resource twice on a page
		},
		Versioned: versioned,
	}
}

// TestIngestedPageGolden pins the PDex Provenance shape of an ingested page.
func TestIngestedPageGolden(t *testing.T) {
	for _, tc := range []struct {
		name      string
		versioned bool
	}{{"target-page-versioned", true}, {"target-page-plain", false}} {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := provenance.ForIngestedPage(page(tc.versioned))
			if err != nil {
				t.Fatal(err)
			}
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, doc.JSON, "", "  "); err != nil {
				t.Fatal(err)
			}
			pretty.WriteByte('\n')
			golden := filepath.Join("testdata", tc.name+".golden.json")
			if *update {
				if err := os.WriteFile(golden, pretty.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(pretty.Bytes(), want) {
				t.Errorf("Provenance differs from %s:\n%s", golden, pretty.String())
			}
			if issues := spec.R4().Validate(doc.Map); len(issues) > 0 {
				t.Errorf("not valid FHIR R4: %v", issues)
			}
		})
	}
}

func TestIngestedPageTargets(t *testing.T) {
	doc, err := provenance.ForIngestedPage(page(true))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tg := range doc.Map["target"].([]any) {
		got = append(got, tg.(map[string]any)["reference"].(string))
	}
	want := []string{"ExplanationOfBenefit/e1/_history/2", "Patient/p1/_history/1"}
	if !slices.Equal(got, want) {
		t.Errorf("targets %v, want %v (one per distinct resource, versioned)", got, want)
	}
	if doc.ID != "batch-12-page-3" || doc.Map["id"] != "batch-12-page-3" || doc.Type != "Provenance" {
		t.Errorf("doc identity %s/%s, map id %v", doc.Type, doc.ID, doc.Map["id"])
	}
}

func TestIngestedPageRefusals(t *testing.T) {
	for name, change := range map[string]func(*provenance.IngestedPage){
		"no resources":    func(p *provenance.IngestedPage) { p.Resources = nil },
		"no source payer": func(p *provenance.IngestedPage) { p.SourceName, p.SourceOrganizationID = "", "" },
		"no time":         func(p *provenance.IngestedPage) { p.Recorded = time.Time{} },
	} {
		p := page(false)
		change(&p)
		if _, err := provenance.ForIngestedPage(p); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	// An organization without a payer id is still named.
	p := page(false)
	p.SourceOrganizationID = ""
	doc, err := provenance.ForIngestedPage(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc.JSON), `"who":{"type":"Organization","display":"Payer A"}`) {
		t.Errorf("agent without payer id: %s", doc.JSON)
	}
}

// TestIngestedPageSearchable stores the Provenance and finds it by target,
// plain and versioned, as Provenance?target= and _revinclude do.
func TestIngestedPageSearchable(t *testing.T) {
	db, err := store.OpenDB(context.Background(), storetest.DSN(t), store.DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	reg := search.NewRegistry(spec.R4())
	st, err := store.Open(db, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	doc, err := provenance.ForIngestedPage(page(true))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := st.Write(ctx, func(tx *store.Tx) error {
		_, err := tx.Put(doc, store.PutOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"ExplanationOfBenefit/e1", "Patient/p1"} {
		q, err := reg.Parse("Provenance", url.Values{"target": {target}}, search.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		if err := st.View(ctx, func(tx *store.Tx) error {
			ids, err = tx.Search(q)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids, []string{"batch-12-page-3"}) {
			t.Errorf("Provenance?target=%s found %v", target, ids)
		}
	}
}
