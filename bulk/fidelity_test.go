package bulk

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/mdm"
	"github.com/p2pserver/p2pserver/oidcservers/oidctest"
)

// fidelityRecord is one member's record as written: JSON text whose
// decimals, string escapes and member order a decode and re-encode would
// change. Each removed entry is the exact text a payer-to-payer export
// cuts out of its resource (PDex STU 2.1 payertopayerbulkexchange.html,
// Payer-to-Payer Exchange (bulk): "Claims and Encounters, with financial
// data excluded as defined by Non-Financial ExplanationOfBenefit
// profiles", the CARIN BB Basis profiles; see scope.go); {P} is the
// member's id.
var fidelityRecord = []struct {
	key, text string
	removed   []string // what payer-to-payer leaves out, as written
	plainCut  []string // what every group/patient export leaves out
}{
	{key: "Observation/obs-{P}", text: `{"resourceType":"Observation","id":"obs-{P}","status":"final","subject":{"reference":"Patient/{P}"},"effectiveDateTime":"2026-10-01","code":{"text":"caf\u00e9 \/ r\u00e9sultat \"x\""},"valueQuantity":{"value":1.50,"unit":"mg"},"component":[{"code":{"text":"a"},"valueQuantity":{"value":1e2,"unit":"mg"}},{"code":{"text":"b"},"valueQuantity":{"value":0.000,"unit":"mg"}},{"code":{"text":"c"},"valueQuantity":{"value":-0.0,"unit":"mg"}},{"code":{"text":"d"},"valueQuantity":{"value":100.00,"unit":"mg"}}]}`},
	{key: "Coverage/cov-{P}", text: `{"resourceType":"Coverage","id":"cov-{P}","status":"active","identifier":[{"system":"http://old-payer.example/coverage","value":"C-{P}"}],"beneficiary":{"reference":"Patient/{P}"},"payor":[{"display":"Old Payer \u00e9"}],"costToBeneficiary":[{"type":{"text":"copay"},"valueMoney":{"value":20.00,"currency":"USD"}}],"order":2}`,
		removed: []string{`,"costToBeneficiary":[{"type":{"text":"copay"},"valueMoney":{"value":20.00,"currency":"USD"}}]`}},
	{key: "ExplanationOfBenefit/eob-{P}", text: `{"resourceType":"ExplanationOfBenefit","id":"eob-{P}","status":"active","use":"claim","type":{"text":"professional"},"patient":{"reference":"Patient/{P}"},"created":"2026-10-01","billablePeriod":{"start":"2026-09-30","end":"2026-10-01"},"insurer":{"display":"Old Payer"},"provider":{"display":"Dr \u00c9mile \/ clinic"},"outcome":"complete","insurance":[{"focal":true,"coverage":{"reference":"Coverage/cov-{P}"}}],` +
		`"item":[{"sequence":1,"productOrService":{"text":"visit"},"quantity":{"value":1.50},"net":{"value":100.00,"currency":"USD"},"adjudication":[{"category":{"text":"copay"},"amount":{"value":20.10,"currency":"USD"}}],"detail":[{"sequence":1,"productOrService":{"text":"part"},"unitPrice":{"value":10.50,"currency":"USD"},"factor":1.0,"subDetail":[{"sequence":1,"productOrService":{"text":"sub"},"net":{"value":5.00,"currency":"USD"},"quantity":{"value":2.0}}]}]}],` +
		`"addItem":[{"productOrService":{"text":"extra"},"net":{"value":7.70,"currency":"USD"},"quantity":{"value":3.000}}],` +
		`"total":[{"category":{"text":"submitted"},"amount":{"value":100.00,"currency":"USD"}}],"payment":{"amount":{"value":80.0,"currency":"USD"}},"benefitBalance":[{"category":{"text":"medical"}}],"adjudication":[{"category":{"text":"x"},"amount":{"value":1e1,"currency":"USD"}}],"benefitPeriod":{"start":"2026-01-01"},"precedence":1}`,
		removed: []string{
			`,"net":{"value":100.00,"currency":"USD"}`,
			`,"adjudication":[{"category":{"text":"copay"},"amount":{"value":20.10,"currency":"USD"}}]`,
			`,"unitPrice":{"value":10.50,"currency":"USD"}`,
			`,"factor":1.0`,
			`,"net":{"value":5.00,"currency":"USD"}`,
			`,"net":{"value":7.70,"currency":"USD"}`,
			`,"total":[{"category":{"text":"submitted"},"amount":{"value":100.00,"currency":"USD"}}]`,
			`,"payment":{"amount":{"value":80.0,"currency":"USD"}}`,
			`,"benefitBalance":[{"category":{"text":"medical"}}]`,
			`,"adjudication":[{"category":{"text":"x"},"amount":{"value":1e1,"currency":"USD"}}]`,
			`,"benefitPeriod":{"start":"2026-01-01"}`,
		}},
	// Provenance lists what was sent only: the target not exported goes.
	{key: "Provenance/prov-{P}", text: `{"resourceType":"Provenance","id":"prov-{P}","target":[{"reference":"Observation/obs-{P}"},{"reference":"Observation/nowhere-{P}"}],"recorded":"2026-10-01T00:00:00Z","agent":[{"who":{"display":"Old \u00e9 \/ Payer"}}]}`,
		plainCut: []string{`,{"reference":"Observation/nowhere-{P}"}`}},
}

// TestExportKeepsStoredJSON: every exported NDJSON line is the stored
// resource byte for byte (FHIR R4 json.html: decimals keep their
// precision, datatypes.html#decimal), less exactly what the export must
// remove: payer-to-payer leaves out the financial members (PDex STU 2.1
// payer-to-payer exchange), Provenance the targets not sent. It runs
// over real HTTP for a plain Patient/$export of a member with no consent
// and of one with a consent policy in force, and for a payer-to-payer
// $davinci-data-export (whose member always has a consent).
func TestExportKeepsStoredJSON(t *testing.T) {
	t.Parallel()
	idp := oidctest.New(t)
	p := newPayer(t, idp, Config{})
	now := time.Now().UTC()
	stored := map[string]map[string]string{} // member -> key -> stored JSON
	for _, m := range []string{"fid", "guarded"} {
		resp, body := p.do("PUT", "/Patient/"+m, adminToken, `{"resourceType":"Patient","id":"`+m+`","name":[{"family":"Fidel`+m+`","given":["Ann"]}],"gender":"female","birthDate":"1971-02-03"}`)
		if resp.StatusCode >= 300 {
			t.Fatalf("Patient/%s: %d %s", m, resp.StatusCode, body)
		}
		stored[m] = map[string]string{}
		for _, r := range fidelityRecord {
			key := strings.ReplaceAll(r.key, "{P}", m)
			resp, body := p.do("PUT", "/"+key, adminToken, strings.ReplaceAll(r.text, "{P}", m))
			if resp.StatusCode >= 300 {
				t.Fatalf("%s: %d %s", key, resp.StatusCode, body)
			}
			resp, body = p.do("GET", "/"+key, adminToken, nil)
			if resp.StatusCode != 200 {
				t.Fatalf("read %s: %d %s", key, resp.StatusCode, body)
			}
			stored[m][key] = string(bytes.TrimSpace(body))
		}
	}
	// The read gives the text as written (the baseline the export is held to).
	for _, want := range []string{`"value":1.50,`, `"value":1e2,`, `"value":0.000,`, `"value":-0.0,`, `"value":100.00,`, `caf\u00e9 \/`} {
		if !strings.Contains(stored["fid"]["Observation/obs-fid"], want) {
			t.Fatalf("the stored Observation lost %s: %s", want, stored["fid"]["Observation/obs-fid"])
		}
	}
	// Guarded's consent in force: a regular-policy HRex Consent withholds
	// sensitive resources (none here), so the export decides on the
	// decoded resources.
	c := consent("permit", mdm.PolicyRegular, now.Add(-day), now.AddDate(1, 0, 0))
	c["id"], c["patient"] = "consent-guarded", map[string]any{"reference": "Patient/guarded"}
	p.put(c)

	_, tok := p.backend("new-payer", "system/*.rs")
	// The payer-to-payer Group: guarded matched, by its coverage.
	m := p.wait(p.kickoff("POST", "/Group/$bulk-member-match", tok, matchRequest(
		memberBundle("1", "Fidelguarded", "Ann", "1971-02-03", "C-guarded", consent("permit", mdm.PolicyRegular, now.Add(-day), now.AddDate(1, 0, 0))))), tok)
	var group string
	for _, g := range p.lines(m.Output[0].URL, tok) {
		if groupCode(g) == outcomeMatched {
			group, _ = g["id"].(string)
		}
	}
	if group == "" {
		t.Fatal("no matched Group")
	}
	types := "&_type=Observation,Coverage,ExplanationOfBenefit,Provenance"
	rows := []struct {
		name, path, member string
		p2p                bool
	}{
		{"plain $export, no consent", "/Patient/$export?_outputFormat=ndjson" + types, "fid", false},
		{"plain $export, consent policy", "/Patient/$export?_outputFormat=ndjson" + types, "guarded", false},
		{"payer-to-payer, consent policy", "/Group/" + group + "/$davinci-data-export?exportType=" + url.QueryEscape(PayerToPayer) + types, "guarded", true},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			m := p.wait(p.kickoff("GET", row.path, tok, nil), tok)
			got := map[string]string{}
			for _, o := range m.Output {
				resp, raw := p.do("GET", o.URL, tok, nil)
				if resp.StatusCode != 200 {
					t.Fatalf("%s: %d", o.URL, resp.StatusCode)
				}
				sc := bufio.NewScanner(bytes.NewReader(raw))
				sc.Buffer(nil, 16<<20)
				for sc.Scan() {
					var r struct{ ResourceType, ID string }
					if !json.Valid(sc.Bytes()) || json.Unmarshal(sc.Bytes(), &r) != nil {
						t.Fatalf("not valid JSON: %s", sc.Text())
					}
					got[r.ResourceType+"/"+r.ID] = sc.Text()
				}
			}
			for _, r := range fidelityRecord {
				key := strings.ReplaceAll(r.key, "{P}", row.member)
				want := stored[row.member][key]
				cuts := r.plainCut
				if row.p2p {
					cuts = append(cuts[:len(cuts):len(cuts)], r.removed...)
				}
				for _, cut := range cuts {
					cut = strings.ReplaceAll(cut, "{P}", row.member)
					if strings.Count(want, cut) != 1 {
						t.Fatalf("%s: %s is not once in the stored JSON %s", key, cut, want)
					}
					want = strings.Replace(want, cut, "", 1)
				}
				if got[key] != want {
					t.Errorf("%s exported as\n%s\nwant (stored, less what is removed)\n%s", key, got[key], want)
				}
			}
		})
	}
}
