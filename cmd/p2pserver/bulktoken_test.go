package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// tokenSecret is the client secret of the definitions the hostile
// token endpoint tests use (client_secret_basic rows).
const tokenSecret = "s3cr3t-Of-The-New-Payer-0123456789"

// tokenRequest is what the new payer sent the token endpoint: its client
// assertion (private_key_jwt) or Authorization header
// (client_secret_basic).
type tokenRequest struct{ assertion, authorization string }

// tokenRequests records what a token endpoint was sent.
type tokenRequests struct {
	mu   sync.Mutex
	seen []tokenRequest
}

// serve records the token request r and answers it with answer.
func (t *tokenRequests) serve(w http.ResponseWriter, r *http.Request, answer func(w http.ResponseWriter, rq tokenRequest)) {
	_ = r.ParseForm()
	rq := tokenRequest{assertion: r.PostForm.Get("client_assertion"), authorization: r.Header.Get("Authorization")}
	t.mu.Lock()
	t.seen = append(t.seen, rq)
	t.mu.Unlock()
	answer(w, rq)
}

// all returns the requests recorded so far.
func (t *tokenRequests) all() []tokenRequest {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.seen)
}

// hostileTokenAnswer is one way a token endpoint answers by quoting the
// client_credentials request it was sent (SMART Backend Services,
// "Obtaining an access token").
type hostileTokenAnswer struct {
	name   string
	basic  bool // the definition authenticates with client_secret_basic
	answer func(w http.ResponseWriter, rq tokenRequest)
}

// hostileTokenAnswers echo the client assertion, the client secret or its
// Basic header: in an error, in a token response made unusable, in a
// huge body, in an HTML page, and where a clip cuts the secret short.
func hostileTokenAnswers() []hostileTokenAnswer {
	// A client secret after the 200 bytes of an error_description a
	// message keeps would show only its start there.
	padding := strings.Repeat("x", 190)
	jsonAnswer := func(w http.ResponseWriter, status int, body map[string]any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(body)
	}
	return []hostileTokenAnswer{
		{"invalid_client quoting the client assertion", false, func(w http.ResponseWriter, rq tokenRequest) {
			jsonAnswer(w, 400, map[string]any{"error": "invalid_client", "error_description": "the assertion " + rq.assertion + " is not signed by a key we know"})
		}},
		{"an error code that is the client assertion", false, func(w http.ResponseWriter, rq tokenRequest) {
			jsonAnswer(w, 400, map[string]any{"error": rq.assertion, "error_description": "client_assertion=" + rq.assertion})
		}},
		{"a token response whose token_type is the client assertion", false, func(w http.ResponseWriter, rq tokenRequest) {
			jsonAnswer(w, 200, map[string]any{"access_token": "t", "token_type": rq.assertion, "expires_in": 300})
		}},
		{"a 2 MB answer repeating the client assertion", false, func(w http.ResponseWriter, rq tokenRequest) {
			jsonAnswer(w, 400, map[string]any{"error": "invalid_request", "error_description": strings.Repeat(rq.assertion+" ", 2<<20/len(rq.assertion))})
		}},
		{"an HTML error page quoting the client assertion", false, func(w http.ResponseWriter, rq tokenRequest) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(500)
			fmt.Fprintf(w, "<html><body><h1>Internal error</h1><pre>client_assertion=%s</pre></body></html>", rq.assertion)
		}},
		{"invalid_client quoting the client secret cut short", true, func(w http.ResponseWriter, rq tokenRequest) {
			jsonAnswer(w, 401, map[string]any{"error": "invalid_client", "error_description": padding + " " + tokenSecret})
		}},
		{"invalid_client quoting the client secret and the Basic header", true, func(w http.ResponseWriter, rq tokenRequest) {
			basic := strings.TrimPrefix(rq.authorization, "Basic ")
			jsonAnswer(w, 401, map[string]any{"error": "invalid_client", "error_description": "secret " + tokenSecret + " credentials " + basic + " header " + rq.authorization})
		}},
		{"a token response whose token_type is the client secret", true, func(w http.ResponseWriter, rq tokenRequest) {
			jsonAnswer(w, 200, map[string]any{"access_token": "t", "token_type": tokenSecret, "expires_in": 300})
		}},
	}
}

// echoedSecrets returns what must not show of the requests seen, whole or
// in part, by what it is: the assertion's claims and signature (its
// header names only the key), the secret's start, the Basic credentials'
// start.
func echoedSecrets(t *testing.T, seen []tokenRequest, basic bool) map[string]string {
	t.Helper()
	if len(seen) == 0 {
		t.Fatal("the token endpoint was not asked")
	}
	secrets := map[string]string{}
	for _, rq := range seen {
		if parts := strings.Split(rq.assertion, "."); len(parts) == 3 {
			secrets["the client assertion's claims"] = parts[1][:16]
			secrets["the client assertion's signature"] = parts[2][:16]
		}
		if b := strings.TrimPrefix(rq.authorization, "Basic "); b != rq.authorization {
			secrets["the Basic credentials"] = b[:16]
		}
	}
	if basic {
		secrets["the client secret"] = tokenSecret[:8]
		secrets["the client secret, base64"] = base64.StdEncoding.EncodeToString([]byte(tokenSecret))[:12]
	} else if len(secrets) == 0 {
		t.Fatalf("no client assertion was sent: %v", seen)
	}
	return secrets
}

// TestBulkJobNeverShowsWhatTheTokenEndpointEchoes: the old payer's token
// endpoint may answer the new payer's client_credentials request (SMART
// Backend Services, "Obtaining an access token") by quoting it: the
// signed client assertion (a credential until it expires), the client
// secret (client_secret_basic), its Basic header, in an error, in a
// token response it makes unusable, in a huge body, or in an HTML page.
// Whatever it answers, the bulk job ends in a clear state, and neither
// the job's status, the job list nor the new payer's log holds any of
// those credentials, whole or in part.
func TestBulkJobNeverShowsWhatTheTokenEndpointEchoes(t *testing.T) {
	t.Parallel()
	rows := hostileTokenAnswers()
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			t.Parallel()
			logs := &lockedBuffer{}
			fp := newFaultPairLogged(t, logs, 1, "-bulk-retry-for", "2s")
			var smart map[string]any
			if st := fp.source.call("GET", "/fhir/.well-known/smart-configuration", "", nil, &smart); st != 200 {
				t.Fatalf("smart-configuration: %d", st)
			}
			tokenURL, _ := url.Parse(smart["token_endpoint"].(string))
			if row.basic {
				var def map[string]any
				path := fmt.Sprintf("/api/oidc_servers/%d", fp.pid)
				fp.target.call("GET", path, testAdmin, nil, &def)
				def["systemAuth"], def["clientSecret"] = "client_secret_basic", tokenSecret
				delete(def, "pid")
				if st := fp.target.call("PUT", path, testAdmin, def, nil); st != 200 {
					t.Fatalf("PUT the definition with client_secret_basic: %d", st)
				}
			}
			var requests tokenRequests
			fp.traffic.then = func(w http.ResponseWriter, r *http.Request) bool {
				if r.Method != http.MethodPost || r.URL.Path != tokenURL.Path {
					return false
				}
				requests.serve(w, r, row.answer)
				return true
			}
			path := startBulk(t, fp.target.payer, fp.pid, map[string]any{"members": fp.list})
			st := waitBulk(t, fp.target.payer, path, time.Minute)
			if st["batchStatus"] != "FAILED" || st["failureReason"] == nil {
				t.Fatalf("job: %v", st)
			}
			var status, list json.RawMessage
			fp.target.call("GET", path, testBackoffice, nil, &status)
			fp.target.call("GET", path[:strings.LastIndex(path, "/")], testBackoffice, nil, &list)
			shown := map[string]string{"the job's status": string(status), "the job list": string(list), "the log": logs.String()}

			secrets := echoedSecrets(t, requests.all(), row.basic)
			for where, text := range shown {
				for what, s := range secrets {
					if strings.Contains(text, s) {
						t.Errorf("%s shows %s (%q)", where, what, s)
					}
				}
			}
			for _, line := range strings.Split(logs.String(), "\n") {
				if len(line) > 4000 {
					t.Errorf("a log line of %d bytes: %.300s…", len(line), line)
				}
			}
			t.Logf("failureReason: %v", st["failureReason"])
		})
	}
}

// TestSystemTokenCheckNeverShowsWhatTheTokenEndpointEchoes: POST
// /api/oidc_servers/{id}/system_token, the admin's check of system access
// to the source payer, reports a token endpoint that quotes the request
// (every answer of hostileTokenAnswers) as a problem, and neither the
// report nor the log holds the credentials quoted, whole or in part.
func TestSystemTokenCheckNeverShowsWhatTheTokenEndpointEchoes(t *testing.T) {
	t.Parallel()
	for _, row := range hostileTokenAnswers() {
		t.Run(row.name, func(t *testing.T) {
			t.Parallel()
			var requests tokenRequests
			endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests.serve(w, r, row.answer)
			}))
			defer endpoint.Close()
			logs := &lockedBuffer{}
			target := startLiveLogged(t, filepath.Join(t.TempDir(), "p2p.db"), logs, "-admin-token", testAdmin, "-secret-key", testSecretKey)
			def := map[string]any{"name": "Source payer", "issuer": endpoint.URL, "clientId": "member-app",
				"fhirEndpoint": "http://127.0.0.1:9/fhir", "tokenEndpoint": endpoint.URL + "/token",
				"systemClientId": "new-payer", "systemScopes": "system/*.rs"}
			if row.basic {
				def["systemAuth"], def["clientSecret"] = "client_secret_basic", tokenSecret
			}
			var created map[string]any
			if st := target.call("POST", "/api/oidc_servers", testAdmin, def, &created); st != 201 {
				t.Fatalf("create: %d %v", st, created)
			}
			var raw json.RawMessage
			if st := target.call("POST", fmt.Sprintf("/api/oidc_servers/%v/system_token", created["pid"]), testAdmin, nil, &raw); st != 200 {
				t.Fatalf("system_token: %d %s", st, raw)
			}
			var rep systemReport
			if err := json.Unmarshal(raw, &rep); err != nil {
				t.Fatal(err)
			}
			if rep.OK || len(rep.Problems) == 0 {
				t.Fatalf("a token endpoint that gave no token: %s", raw)
			}
			for what, secret := range echoedSecrets(t, requests.all(), row.basic) {
				if strings.Contains(string(raw), secret) {
					t.Errorf("the report shows %s (%q): %s", what, secret, raw)
				}
				if strings.Contains(logs.String(), secret) {
					t.Errorf("the log shows %s (%q)", what, secret)
				}
			}
			t.Logf("problems: %q", rep.Problems)
		})
	}
}
