package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// web makes the demo's HTTP calls and prints each as the request a payer's
// engineer would send and the fields of the answer that matter. It never
// follows redirects: each hop of a browser's journey is a call of its own.
type web struct {
	out    io.Writer
	client *http.Client
}

func newWeb(out io.Writer) *web {
	return &web{out: out, client: &http.Client{
		Timeout:       30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// answer is a response read whole.
type answer struct {
	status int
	header http.Header
	body   []byte
	json   map[string]any // the body when it is a JSON object
}

// req describes one call.
type req struct {
	method, url string
	// as says who calls, printed beside the request ("admin token",
	// "the member's browser").
	as     string
	token  string
	body   []byte
	ctype  string
	form   url.Values // sent as application/x-www-form-urlencoded
	basic  [2]string  // client_id, client_secret for HTTP Basic
	header map[string]string
	// what describes the body in the printout ("examples/patient.json").
	what string
	// quiet leaves the request line to the caller (print), for polls
	// shown only when something changed.
	quiet bool
}

func (w *web) do(ctx context.Context, r req) (*answer, error) {
	var body io.Reader
	ctype := r.ctype
	switch {
	case r.form != nil:
		body = strings.NewReader(r.form.Encode())
		ctype = "application/x-www-form-urlencoded"
	case r.body != nil:
		body = bytes.NewReader(r.body)
		if ctype == "" {
			ctype = "application/json"
			if strings.Contains(r.url, "/fhir") {
				ctype = "application/fhir+json"
			}
		}
	}
	hr, err := http.NewRequestWithContext(ctx, r.method, r.url, body)
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		hr.Header.Set("Content-Type", ctype)
	}
	if r.token != "" {
		hr.Header.Set("Authorization", "Bearer "+r.token)
	}
	if r.basic[0] != "" {
		hr.SetBasicAuth(r.basic[0], r.basic[1])
	}
	for k, v := range r.header {
		hr.Header.Set(k, v)
	}
	if !r.quiet {
		w.print(r)
	}
	resp, err := w.client.Do(hr)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", r.method, r.url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading the answer: %w", r.method, r.url, err)
	}
	a := &answer{status: resp.StatusCode, header: resp.Header, body: raw}
	if len(raw) > 0 && raw[0] == '{' {
		_ = json.Unmarshal(raw, &a.json)
	}
	return a, nil
}

// print prints the request line: method, URL, who sends it and what.
func (w *web) print(r req) {
	line := "  > " + r.method + " " + r.url
	var notes []string
	if r.as != "" {
		notes = append(notes, r.as)
	}
	if r.what != "" {
		notes = append(notes, r.what)
	}
	if len(notes) > 0 {
		line += "   (" + strings.Join(notes, "; ") + ")"
	}
	fmt.Fprintln(w.out, line)
}

// show prints the answer's status and fields.
func (w *web) show(a *answer, fields ...string) {
	line := fmt.Sprintf("  < %d %s", a.status, http.StatusText(a.status))
	for _, f := range fields {
		if f != "" {
			line += "   " + f
		}
	}
	fmt.Fprintln(w.out, line)
}

// expect checks the status and, when it is not the one wanted, returns an
// error carrying what the server said (its OperationOutcome or error).
func expect(a *answer, want int, what string) error {
	if a.status == want {
		return nil
	}
	msg := strings.TrimSpace(string(a.body))
	if len(msg) > 600 {
		msg = msg[:600] + "…"
	}
	return fmt.Errorf("%s: answered %d, want %d: %s", what, a.status, want, msg)
}

// str reads a string at a path of nested JSON objects ("meta", "source").
func str(m map[string]any, path ...string) string {
	var cur any = m
	for _, p := range path {
		o, ok := cur.(map[string]any)
		if !ok {
			return ""
		}
		cur = o[p]
	}
	switch v := cur.(type) {
	case string:
		return v
	case float64:
		return fmt.Sprint(v)
	case bool:
		return fmt.Sprint(v)
	}
	return ""
}

// short shortens a secret-looking value for the printout.
func short(s string) string {
	if len(s) <= 16 {
		return s
	}
	return s[:10] + "…(" + fmt.Sprint(len(s)) + " chars)"
}
