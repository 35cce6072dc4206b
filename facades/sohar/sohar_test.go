package sohar_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/p2pserver/p2pserver/facades/sohar"
	"github.com/p2pserver/p2pserver/facades/sohar/sohartest"
)

// The connector's Svix verification accepts what the simulator signs, the
// way Svix's libraries do, and nothing else.
func TestVerifySignature(t *testing.T) {
	secret, key := sohartest.NewWebhookSecret()
	_, other := sohartest.NewWebhookSecret()
	body := []byte(`{"event":"verification.updated","verificationId":"v1","status":"complete.eligible"}`)
	now := time.Unix(1_800_000_000, 0)
	good := sohartest.SignHeaders(key, "msg_1", now, body)
	if err := sohar.VerifySignature(key, good, body, now.Add(time.Minute), 0); err != nil {
		t.Fatalf("good signature: %v", err)
	}
	// Secret rotation: several signatures, one matching.
	rot := good.Clone()
	rot.Set("svix-signature", sohartest.SignHeaders(other, "msg_1", now, body).Get("svix-signature")+" "+good.Get("svix-signature"))
	if err := sohar.VerifySignature(key, rot, body, now, 0); err != nil {
		t.Fatalf("rotated signatures: %v", err)
	}
	// Unbranded webhook- headers.
	unb := http.Header{}
	for _, k := range []string{"id", "timestamp", "signature"} {
		unb.Set("webhook-"+k, good.Get("svix-"+k))
	}
	if err := sohar.VerifySignature(key, unb, body, now, 0); err != nil {
		t.Fatalf("webhook- headers: %v", err)
	}
	bad := map[string]func() (http.Header, []byte, time.Time){
		"other key": func() (http.Header, []byte, time.Time) {
			return sohartest.SignHeaders(other, "msg_1", now, body), body, now
		},
		"changed body": func() (http.Header, []byte, time.Time) {
			return good, []byte(strings.Replace(string(body), "v1", "v2", 1)), now
		},
		"changed id": func() (http.Header, []byte, time.Time) {
			h := good.Clone()
			h.Set("svix-id", "msg_2")
			return h, body, now
		},
		"too old":     func() (http.Header, []byte, time.Time) { return good, body, now.Add(6 * time.Minute) },
		"from future": func() (http.Header, []byte, time.Time) { return good, body, now.Add(-6 * time.Minute) },
		"no headers":  func() (http.Header, []byte, time.Time) { return http.Header{}, body, now },
		"v2 scheme": func() (http.Header, []byte, time.Time) {
			h := good.Clone()
			h.Set("svix-signature", strings.Replace(h.Get("svix-signature"), "v1,", "v2,", 1))
			return h, body, now
		},
		"bad timestamp": func() (http.Header, []byte, time.Time) {
			h := good.Clone()
			h.Set("svix-timestamp", "soon")
			return h, body, now
		},
	}
	for name, f := range bad {
		h, b, at := f()
		if err := sohar.VerifySignature(key, h, b, at, 0); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := sohar.VerifySignature(nil, good, body, now, 0); err == nil {
		t.Error("accepted without a secret")
	}
	if _, err := sohar.New(sohar.Config{ClientID: "c", ClientSecret: "s", WebhookSecret: secret}, nil); err != nil {
		t.Fatal(err)
	}
}

// The simulator answers the documented wire format itself.
func TestSimulatorWireFormat(t *testing.T) {
	sim, err := sohartest.New(sohartest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	sim.AddClient("c", "s")
	resp, err := http.Post(sim.URL+"/oauth/token", "application/json", strings.NewReader(`{"client_id":"c","client_secret":"wrong"}`))
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong secret: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	req, _ := http.NewRequest("POST", sim.URL+"/v2/verifications", strings.NewReader(`{}`))
	resp, err = http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
}
