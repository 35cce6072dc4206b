package healthietest

import (
	"bytes"
	"encoding/json"
	"fmt"
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

// TestSimulatorSortByIsGone: Healthie deprecated the string sort_by query
// arguments on November 6, 2023, flagged them with @deprecated and
// announced their removal for August 6, 2024, recommending the enum
// order_by arguments. The simulator refuses sort_by wherever it was, and
// sorts users by order_by.
func TestSimulatorSortByIsGone(t *testing.T) {
	s := New(Options{})
	s.Seed(6)
	srv := s.Start()
	defer srv.Close()
	ids := func(query string) ([]string, any) {
		t.Helper()
		b, _ := json.Marshal(map[string]string{"query": query})
		_, m := post(t, srv.URL, s.APIKey(), string(b))
		data, _ := m["data"].(map[string]any)
		var out []string
		for _, v := range data {
			list, _ := v.([]any)
			for _, u := range list {
				out = append(out, u.(map[string]any)["id"].(string))
			}
		}
		return out, m["errors"]
	}
	byCreated, errs := ids(`{ users(should_paginate: false, order_by: CREATED_AT_ASC) { id } }`)
	if errs != nil || len(byCreated) < 2 {
		t.Fatalf("order_by CREATED_AT_ASC: %v %v", byCreated, errs)
	}
	desc, _ := ids(`{ users(should_paginate: false, order_by: CREATED_AT_DESC) { id } }`)
	for i := range byCreated {
		if desc[len(desc)-1-i] != byCreated[i] {
			t.Fatalf("CREATED_AT_DESC %v is not CREATED_AT_ASC %v reversed", desc, byCreated)
		}
	}
	for _, c := range []struct {
		name, query, wantErr string
	}{
		{"users with sort_by (ListPatients, ListPatientPolicies used it)", `{ users(sort_by: "created_at_asc") { id } }`, "removed on August 6, 2024"},
		{"users with sort_by and order_by", `{ users(sort_by: "last_name", order_by: LAST_NAME_ASC) { id } }`, "use the enum order_by"},
		{"organizationMembers with sort_by", `{ organizationMembers(sort_by: "last_name_asc") { id } }`, "removed on August 6, 2024"},
		{"cms1500s with sort_by", `{ cms1500s(sort_by: "created_at") { id } }`, "removed on August 6, 2024"},
		{"an order_by value that is no UserOrderKeys", `{ users(order_by: created_at_asc) { id } }`, "created_at_asc"},
		{"an order_by on data the simulator does not keep", `{ users(order_by: NEXT_APPT_DATE_ASC) { id } }`, "does not sort users by NEXT_APPT_DATE_ASC"},
	} {
		got, errs := ids(c.query)
		if errs == nil || !strings.Contains(fmt.Sprint(errs), c.wantErr) {
			t.Errorf("%s: %v, errors %v; want an error saying %q", c.name, got, errs, c.wantErr)
		}
	}
	for _, ok := range []string{`{ users(order_by: LAST_NAME_ASC) { id } }`, `{ users { id } }`, `{ organizationMembers { id } }`, `{ cms1500s { id } }`} {
		if _, errs := ids(ok); errs != nil {
			t.Errorf("%s: %v", ok, errs)
		}
	}
}
