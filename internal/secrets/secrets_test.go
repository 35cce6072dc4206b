package secrets

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func newRawKey(t *testing.T) []byte {
	t.Helper()
	b := make([]byte, KeySize)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNewCipherKeyForms(t *testing.T) {
	t.Parallel()
	raw := newRawKey(t)
	accepted := map[string]string{
		"hex":            hex.EncodeToString(raw),
		"hex upper":      strings.ToUpper(hex.EncodeToString(raw)),
		"base64":         base64.StdEncoding.EncodeToString(raw),
		"base64 raw":     base64.RawStdEncoding.EncodeToString(raw),
		"base64 url":     base64.URLEncoding.EncodeToString(raw),
		"base64 url raw": base64.RawURLEncoding.EncodeToString(raw),
		"spaces":         "  " + base64.StdEncoding.EncodeToString(raw) + " ",
	}
	// Every accepted form of the same bytes must be the same key.
	ref, err := NewCipher(hex.EncodeToString(raw))
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := ref.Seal([]byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	for name, k := range accepted {
		c, err := NewCipher(k)
		if err != nil {
			t.Errorf("%s: NewCipher: %v", name, err)
			continue
		}
		if got, err := c.Open(sealed); err != nil || string(got) != "x" {
			t.Errorf("%s: Open = %q, %v; want the same key as hex", name, got, err)
		}
	}

	refused := map[string]string{
		"empty":           "",
		"only commas":     " , ,",
		"passphrase":      "correct horse battery staple",
		"short base64":    base64.StdEncoding.EncodeToString(raw[:16]),
		"long base64":     base64.StdEncoding.EncodeToString(append(raw, raw...)),
		"short hex":       hex.EncodeToString(raw[:31]),
		"duplicate":       hex.EncodeToString(raw) + "," + base64.StdEncoding.EncodeToString(raw),
		"one bad of many": hex.EncodeToString(raw) + ",nope",
	}
	for name, k := range refused {
		c, err := NewCipher(k)
		if err == nil {
			t.Errorf("%s: NewCipher(%q) accepted the key", name, k)
			continue
		}
		if c != nil {
			t.Errorf("%s: NewCipher returned a Cipher with an error", name)
		}
		if len(k) > 8 && strings.Contains(err.Error(), k) {
			t.Errorf("%s: error repeats the key material: %v", name, err)
		}
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	t.Parallel()
	c, err := NewCipher(base64.StdEncoding.EncodeToString(newRawKey(t)))
	if err != nil {
		t.Fatal(err)
	}
	for _, plain := range [][]byte{nil, []byte(""), []byte("s3cr3t"), bytes.Repeat([]byte{0xff}, 4096)} {
		a, err := c.Seal(plain)
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.Seal(plain)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(a, b) {
			t.Error("two seals of the same plaintext are identical: nonce is not random")
		}
		if len(plain) > 4 && bytes.Contains(a, plain) {
			t.Error("ciphertext contains the plaintext")
		}
		if a[0] != 1 {
			t.Errorf("version byte = %d, want 1", a[0])
		}
		got, err := c.Open(a)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, plain) {
			t.Errorf("Open = %q, want %q", got, plain)
		}
	}
}

func TestOpenRejectsTampering(t *testing.T) {
	t.Parallel()
	c, err := NewCipher(hex.EncodeToString(newRawKey(t)))
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := c.Seal([]byte("client secret"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range sealed {
		if i >= 1 && i < 5 {
			continue // key id bytes: changing them gives ErrWrongKey, tested below
		}
		bad := bytes.Clone(sealed)
		bad[i] ^= 0x01
		if _, err := c.Open(bad); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flipping byte %d: Open error = %v, want ErrCorrupt", i, err)
		}
	}
	if _, err := c.Open(sealed[:len(sealed)-1]); !errors.Is(err, ErrCorrupt) {
		t.Errorf("truncated: %v, want ErrCorrupt", err)
	}
	if _, err := c.Open([]byte{1, 2, 3}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("short: %v, want ErrCorrupt", err)
	}
	bad := bytes.Clone(sealed)
	bad[2] ^= 0x01
	if _, err := c.Open(bad); !errors.Is(err, ErrWrongKey) {
		t.Errorf("changed key id: %v, want ErrWrongKey", err)
	}
}

func TestWrongKeyAndRotation(t *testing.T) {
	t.Parallel()
	oldKey := hex.EncodeToString(newRawKey(t))
	newKey := hex.EncodeToString(newRawKey(t))
	oldC, err := NewCipher(oldKey)
	if err != nil {
		t.Fatal(err)
	}
	newC, err := NewCipher(newKey)
	if err != nil {
		t.Fatal(err)
	}
	both, err := NewCipher(newKey + ", " + oldKey)
	if err != nil {
		t.Fatal(err)
	}

	sealedOld, err := oldC.Seal([]byte("old"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newC.Open(sealedOld); !errors.Is(err, ErrWrongKey) {
		t.Errorf("Open with another key: %v, want ErrWrongKey", err)
	}
	if got, err := both.Open(sealedOld); err != nil || string(got) != "old" {
		t.Errorf("rotating cipher Open(old) = %q, %v", got, err)
	}
	if !both.NeedsRotation(sealedOld) {
		t.Error("NeedsRotation(sealed with old key) = false")
	}
	sealedNew, err := both.Seal([]byte("new"))
	if err != nil {
		t.Fatal(err)
	}
	if both.NeedsRotation(sealedNew) {
		t.Error("NeedsRotation(sealed with current key) = true")
	}
	// The rotating cipher seals with its first key, which the new key alone opens.
	if got, err := newC.Open(sealedNew); err != nil || string(got) != "new" {
		t.Errorf("new key Open(sealed by rotating cipher) = %q, %v", got, err)
	}
	if _, err := oldC.Open(sealedNew); !errors.Is(err, ErrWrongKey) {
		t.Errorf("old key Open(new) = %v, want ErrWrongKey", err)
	}
}

func TestNilCipher(t *testing.T) {
	t.Parallel()
	var c *Cipher
	if _, err := c.Seal([]byte("x")); !errors.Is(err, ErrNoKey) {
		t.Errorf("nil Seal: %v, want ErrNoKey", err)
	}
	if _, err := c.Open([]byte("x")); !errors.Is(err, ErrNoKey) {
		t.Errorf("nil Open: %v, want ErrNoKey", err)
	}
	if !strings.Contains(ErrNoKey.Error(), "P2P_SECRET_KEY") {
		t.Errorf("ErrNoKey does not say how to set a key: %v", ErrNoKey)
	}
	if c.NeedsRotation([]byte("anything at all here")) {
		t.Error("nil NeedsRotation = true")
	}
}
