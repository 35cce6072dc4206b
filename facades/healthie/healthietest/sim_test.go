package healthietest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

func post(t *testing.T, url, key string, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url+"/graphql", strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Basic "+key)
		req.Header.Set("AuthorizationSource", "API")
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("body %s: %v", b, err)
	}
	return resp.StatusCode, m
}

func TestSimulatorSchemaAnswersQueries(t *testing.T) {
	s := New(Options{})
	s.Seed(3)
	srv := s.Start()
	defer srv.Close()
	code, m := post(t, srv.URL, s.APIKey(), `{"query":"{ users(page_size: 2) { id first_name policies { num insurance_plan { payer_id } } } appointments(is_org: true, filter: \"all\", should_paginate: true, page_size: 1) { id cursor date } }"}`)
	if code != 200 || m["errors"] != nil {
		t.Fatalf("status %d body %v", code, m)
	}
	users := m["data"].(map[string]any)["users"].([]any)
	if len(users) != 2 {
		t.Fatalf("users = %v", users)
	}
}

func TestSimulatorRefusesBadKeyAndBadGraphQL(t *testing.T) {
	s := New(Options{})
	srv := s.Start()
	defer srv.Close()
	if code, _ := post(t, srv.URL, "wrong", `{"query":"{ users { id } }"}`); code != 401 {
		t.Fatalf("wrong key: %d", code)
	}
	if code, _ := post(t, srv.URL, "", `{"query":"{ users { id } }"}`); code != 401 {
		t.Fatalf("no key: %d", code)
	}
	_, m := post(t, srv.URL, s.APIKey(), `{"query":"{ users { id no_such_field } }"}`)
	if m["errors"] == nil {
		t.Fatalf("an unknown field must fail validation: %v", m)
	}
	s.ForceRateLimit(1, 0)
	if code, _ := post(t, srv.URL, s.APIKey(), `{"query":"{ users { id } }"}`); code != 429 {
		t.Fatalf("forced 429: %d", code)
	}
	if code, _ := post(t, srv.URL, s.APIKey(), `{"query":"{ users { id } }"}`); code != 200 {
		t.Fatalf("after burst: %d", code)
	}
	_ = bytes.MinRead
}
