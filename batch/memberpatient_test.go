package batch

import (
	"context"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// TestMemberPatientAsStored: the Patient a $bulk-member-match request
// sends (PDex STU 2.1 MemberBundle MemberPatient) is the stored JSON as
// written (FHIR R4 json.html: decimals keep their precision, member
// order, string escapes), less only meta, text and link.
func TestMemberPatientAsStored(t *testing.T) {
	tg := newTarget(t, Config{})
	body := `{"resourceType":"Patient","id":"mp","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},"name":[{"family":"Ren\u00e9e \/ <b>&","given":["Zo\u00eb"]}],"extension":[{"url":"http://example.org/weight","valueDecimal":1.50},{"url":"http://example.org/e","valueDecimal":1e2}],"gender":"female","birthDate":"1971-02-03","link":[{"other":{"reference":"Patient/other"},"type":"seealso"}],"active":true}`
	tg.putResource("Patient", "mp", body)
	want := `{"resourceType":"Patient","id":"mp","name":[{"family":"Ren\u00e9e \/ <b>&","given":["Zo\u00eb"]}],"extension":[{"url":"http://example.org/weight","valueDecimal":1.50},{"url":"http://example.org/e","valueDecimal":1e2}],"gender":"female","birthDate":"1971-02-03","active":true}`
	var got string
	err := tg.st.View(context.Background(), func(tx *store.Tx) error {
		raw, err := memberPatient(tx, "mp")
		got = string(raw)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("MemberPatient\n%s\nwant\n%s", got, want)
	}
	if strings.Contains(got, "meta") {
		t.Error("our meta is sent")
	}
}
