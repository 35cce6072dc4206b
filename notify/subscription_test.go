package notify_test

import (
	"strings"
	"testing"
)

func TestSubscriptionsAreCheckedBeforeTheyAreActive(t *testing.T) {
	e := newEnv(t)
	h := newHook(t)
	good := func() map[string]any {
		return restHook(h.srv.URL+"/hook", "Task?status=requested", "application/fhir+json")
	}
	cases := []struct {
		name   string
		change func(m map[string]any)
		want   []string // one issue per entry, in order of the text
	}{
		{"unknown type", func(m map[string]any) { m["criteria"] = "Tsak?status=requested" }, []string{"must start with a resource type"}},
		{"unknown parameter", func(m map[string]any) { m["criteria"] = "Task?colour=red" }, []string{"colour"}},
		{"result parameter", func(m map[string]any) { m["criteria"] = "Task?status=requested&_sort=-modified" }, []string{"cannot use _sort"}},
		{"instance URL", func(m map[string]any) { m["criteria"] = "Task/1" }, []string{"type-level search"}},
		{"websocket", func(m map[string]any) { m["channel"].(map[string]any)["type"] = "websocket" }, []string{"websocket is not supported"}},
		{"no endpoint", func(m map[string]any) { delete(m["channel"].(map[string]any), "endpoint") }, []string{"needs an endpoint"}},
		{"host not allowed", func(m map[string]any) { m["channel"].(map[string]any)["endpoint"] = "https://hooks.example.org/p2p" }, []string{"host hooks.example.org is not allowed"}},
		{"plain http elsewhere", func(m map[string]any) { m["channel"].(map[string]any)["endpoint"] = "http://10.0.0.8/p2p" }, []string{"must use https"}},
		{"credentials in URL", func(m map[string]any) {
			m["channel"].(map[string]any)["endpoint"] = strings.Replace(h.srv.URL, "http://", "http://u:p@", 1)
		}, []string{"user name or password"}},
		{"payload", func(m map[string]any) { m["channel"].(map[string]any)["payload"] = "application/fhir+xml" }, []string{"application/fhir+xml"}},
		{"reserved header", func(m map[string]any) { m["channel"].(map[string]any)["header"] = []any{"X-Notification-Id: 1"} }, []string{"set by the server"}},
		{"bad header", func(m map[string]any) { m["channel"].(map[string]any)["header"] = []any{"no colon here"} }, []string{"Name: value"}},
		{"bad mailto", func(m map[string]any) {
			m["channel"] = map[string]any{"type": "email", "endpoint": "mailto:ops@payer.example.org,not-an-address"}
		}, []string{`"not-an-address" is not an email address`}},
		{"email not mailto", func(m map[string]any) {
			m["channel"] = map[string]any{"type": "email", "endpoint": "ops@payer.example.org"}
		}, []string{"mailto:"}},
		{"email payload", func(m map[string]any) {
			m["channel"] = map[string]any{"type": "email", "endpoint": "mailto:ops@payer.example.org", "payload": "application/pdf"}
		}, []string{"not supported for email"}},
		{"several problems", func(m map[string]any) {
			m["criteria"] = "Task?colour=red"
			m["channel"].(map[string]any)["endpoint"] = "https://hooks.example.org/p2p"
			m["channel"].(map[string]any)["payload"] = "text/csv"
		}, []string{"colour", "text/csv", "hooks.example.org"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := good()
			c.change(m)
			a := e.do("POST", "/Subscription", m).want(t, 422)
			issues := a.JSON["issue"].([]any)
			if len(issues) != len(c.want) {
				t.Fatalf("%d issues, want %d: %s", len(issues), len(c.want), a.Body)
			}
			for i, w := range c.want {
				d := issues[i].(map[string]any)["diagnostics"].(string)
				found := false
				for _, is := range issues {
					found = found || strings.Contains(is.(map[string]any)["diagnostics"].(string), w)
				}
				if !found {
					t.Errorf("issue %d %q: no issue says %q (%s)", i, d, w, a.Body)
				}
			}
		})
	}

	// A valid one is stored active, whatever status it was written with.
	m := good()
	m["status"] = "requested"
	got := e.do("POST", "/Subscription", m).want(t, 201).JSON
	if got["status"] != "active" {
		t.Errorf("stored as %v", got["status"])
	}
	// off is stored as it is, without checks.
	m = good()
	m["status"] = "off"
	m["channel"].(map[string]any)["endpoint"] = "https://hooks.example.org/p2p"
	if got := e.do("POST", "/Subscription", m).want(t, 201).JSON; got["status"] != "off" {
		t.Errorf("off stored as %v", got["status"])
	}
}

func TestSubscriptionHostsFlagAllowsListedHosts(t *testing.T) {
	e := newEnv(t, withHosts("hooks.example.org,*.partner.example:8443"))
	for _, ep := range []string{"https://hooks.example.org/p2p", "https://a.partner.example:8443/x"} {
		m := restHook(ep, "Task", "")
		e.do("POST", "/Subscription", m).want(t, 201)
	}
	for _, ep := range []string{"https://partner.example:8443/x", "https://a.partner.example/x", "https://evil.example.org/x", "http://127.0.0.1:9/x"} {
		a := e.do("POST", "/Subscription", restHook(ep, "Task", "")).want(t, 422)
		if !strings.Contains(string(a.Body), "is not allowed") {
			t.Errorf("%s: %s", ep, a.Body)
		}
	}
}
