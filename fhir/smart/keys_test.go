package smart

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

func TestParseKeysFormats(t *testing.T) {
	t.Parallel()
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pubJWK, _ := json.Marshal(jose.JSONWebKey{Key: rk.Public(), KeyID: "k1", Use: "sig", Algorithm: "RS256"})
	set, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: rk.Public(), KeyID: "k1", Use: "sig"}, {Key: ek.Public(), KeyID: "k2"}, {Key: ek.Public(), KeyID: "enc", Use: "enc"},
	}})
	der, _ := x509.MarshalPKIXPublicKey(ek.Public())
	pemPub := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	pemRSA := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&rk.PublicKey)})
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "issuer"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	certDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, rk.Public(), rk)
	if err != nil {
		t.Fatal(err)
	}
	pemCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})
	privJWK, _ := json.Marshal(jose.JSONWebKey{Key: rk, KeyID: "secret"})
	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)})

	for _, c := range []struct {
		name string
		data []byte
		n    int
		err  string
	}{
		{"jwk", pubJWK, 1, ""},
		{"jwks without its encryption key", set, 2, ""},
		{"pem public keys", append(pemPub, pemRSA...), 2, ""},
		{"pem certificate", pemCert, 1, ""},
		{"private jwk", privJWK, 0, "private key"},
		{"private pem", pkcs1, 0, "not a public key"},
		{"garbage", []byte("hello"), 0, "no key found"},
		{"empty set", []byte(`{"keys":[]}`), 0, ""},
	} {
		keys, err := ParseKeys(c.data)
		switch {
		case c.name == "empty set":
			if err == nil {
				t.Errorf("%s: accepted", c.name)
			}
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %v, want an error with %q", c.name, err, c.err)
			}
		case err != nil:
			t.Errorf("%s: %v", c.name, err)
		case len(keys) != c.n:
			t.Errorf("%s: %d keys, want %d", c.name, len(keys), c.n)
		}
	}
}

func TestParseIssuersSetting(t *testing.T) {
	t.Parallel()
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	set, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: rk.Public(), KeyID: "k1"}}})
	file := filepath.Join(t.TempDir(), "payer-b.jwks")
	if err := os.WriteFile(file, set, 0o600); err != nil {
		t.Fatal(err)
	}
	iss, err := ParseIssuers(" https://auth.a.example/realms/p2p , https://auth.b.example=" + file + ",")
	if err != nil {
		t.Fatal(err)
	}
	if len(iss) != 2 || iss[0].URL != "https://auth.a.example/realms/p2p" || len(iss[0].Keys) != 0 ||
		iss[1].URL != "https://auth.b.example" || len(iss[1].Keys) != 1 || iss[1].KeyFile != file {
		t.Fatalf("parsed %+v", iss)
	}
	if none, err := ParseIssuers(""); err != nil || len(none) != 0 {
		t.Errorf("empty setting: %v %v", none, err)
	}
	for _, bad := range []string{
		"auth.a.example",
		"https://a.example?x=1",
		"https://a.example,https://a.example/",
		"https://a.example=" + filepath.Join(t.TempDir(), "missing.json"),
	} {
		if _, err := ParseIssuers(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
