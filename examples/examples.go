// Package examples holds the request bodies the README's curl commands
// send (add-payer Task, OIDC server definition, batch job, $member-match
// Parameters, transaction Bundle, eligibility request, a Patient), embedded
// so that the demo (cmd/p2p-demo) and the tests send exactly these files.
//
// batch-job.json carries placeholders the caller replaces before sending:
// ACCESS_TOKEN, REFRESH_TOKEN, SOURCE_PATIENT_ID and TASK_ID. The other
// files are sent as they are; their URLs are those of the README's
// walkthrough (target 127.0.0.1:8080, source 127.0.0.1:8081, OpenID
// provider 127.0.0.1:8090).
package examples

import (
	"embed"
	"fmt"
)

//go:embed *.json
var files embed.FS

// Read returns the example file name (e.g. "add-payer-task.json").
func Read(name string) ([]byte, error) {
	b, err := files.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("examples: %w", err)
	}
	return b, nil
}

// Names lists the example files, in name order.
func Names() []string {
	entries, _ := files.ReadDir(".")
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}
