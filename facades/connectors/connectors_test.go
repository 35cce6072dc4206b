package connectors_test

import (
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/facades/connectors"
	"github.com/p2pserver/p2pserver/facades/eligibility"
)

func TestNewBuildsEveryConfiguredVendor(t *testing.T) {
	t.Setenv("TEST_SOHAR_SECRET", "from-env")
	cfg, err := eligibility.ParseConfig([]byte(`{
	  "routes": [
	    {"payerId": "60054", "vendor": "sohar", "specialty": "PSY", "placeOfService": "10"},
	    {"payerId": "87726", "vendor": "verifytreatment", "vendorPayerId": "vtx_aetna"},
	    {"payerId": "CDCA1", "vendor": "tuuthfairy", "websiteId": "deltadentalins.com"}
	  ],
	  "vendors": {
	    "sohar": {"baseUrl": "http://127.0.0.1:9101", "clientId": "c", "clientSecret": "env:TEST_SOHAR_SECRET"},
	    "verifytreatment": {"baseUrl": "http://127.0.0.1:9102", "clientId": "c", "clientSecret": "s"},
	    "tuuthfairy": {"endpoint": "http://127.0.0.1:9103/graphql", "apiKey": "k"}
	  },
	  "submitWait": "5s"
	}`))
	if err != nil {
		t.Fatal(err)
	}
	conns, err := connectors.New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range conns {
		names = append(names, c.Vendor())
	}
	if strings.Join(names, ",") != "sohar,tuuthfairy,verifytreatment" {
		t.Fatalf("built %v", names)
	}
	if _, err := eligibility.StatusTable(conns...); err != nil {
		t.Fatal(err)
	}
}

func TestNewRefusesBadSettings(t *testing.T) {
	cases := map[string]string{
		"unknown vendor":    `{"vendors": {"acme": {}}}`,
		"unknown field":     `{"vendors": {"sohar": {"clientId": "c", "clientSecret": "s", "clientSecrte": "x"}}}`,
		"missing secret":    `{"vendors": {"sohar": {"clientId": "c"}}}`,
		"bad webhook key":   `{"vendors": {"sohar": {"clientId": "c", "clientSecret": "s", "webhookSecret": "whsec_!!"}}}`,
		"vt without base":   `{"vendors": {"verifytreatment": {"clientId": "c", "clientSecret": "s"}}}`,
		"tf bad public key": `{"vendors": {"tuuthfairy": {"endpoint": "http://127.0.0.1/graphql", "apiKey": "k", "webhookPublicKey": "nope"}}}`,
	}
	for name, raw := range cases {
		cfg, err := eligibility.ParseConfig([]byte(raw))
		if err != nil {
			t.Fatalf("%s: parse: %v", name, err)
		}
		if _, err := connectors.New(cfg, nil, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
