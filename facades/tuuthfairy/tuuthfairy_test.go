package tuuthfairy_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net/http"
	"testing"

	"github.com/p2pserver/p2pserver/facades/tuuthfairy"
	"github.com/p2pserver/p2pserver/facades/tuuthfairy/tuuthfairytest"
)

func pemOf(t *testing.T, pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// Webhooks verify with the key types Node's crypto.verify('SHA256', ...)
// accepts: RSA (the simulator's), ECDSA and Ed25519.
func TestWebhookKeyTypes(t *testing.T) {
	body := []byte(`{"id":"evt_1","event":"datasource_connected","data":{"connectionId":"c1","status":"connected"}}`)
	sim, err := tuuthfairytest.New(tuuthfairytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sum := sha256.Sum256(body)
	ecSig, _ := ecdsa.SignASN1(rand.Reader, ec, sum[:])
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	cases := map[string]struct {
		pub string
		sig string
	}{
		"rsa":     {sim.PublicKeyPEM(), sim.Sign(body)},
		"ecdsa":   {pemOf(t, &ec.PublicKey), base64.StdEncoding.EncodeToString(ecSig)},
		"ed25519": {pemOf(t, edPub), base64.StdEncoding.EncodeToString(ed25519.Sign(edPriv, body))},
	}
	for name, c := range cases {
		conn, err := tuuthfairy.New(tuuthfairy.Config{Endpoint: "http://127.0.0.1:1/graphql", APIKey: "k", WebhookPublicKey: c.pub}, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		notices, err := conn.Webhook(t.Context(), http.Header{"X-Tuuthfairy-Signature": {c.sig}}, body)
		if err != nil || len(notices) != 1 || notices[0].ConnectionID != "c1" || notices[0].DeliveryID != "evt_1" {
			t.Errorf("%s: %v %v", name, notices, err)
		}
		if _, err := conn.Webhook(t.Context(), http.Header{"X-Tuuthfairy-Signature": {c.sig}}, append(body, ' ')); err == nil {
			t.Errorf("%s: a changed body verified", name)
		}
	}
}
