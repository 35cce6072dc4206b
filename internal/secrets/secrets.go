// Package secrets encrypts small secrets at rest: OIDC client secrets, member
// OAuth tokens, vendor credentials. It uses AES-256-GCM with a random nonce per
// message and a versioned format, so the scheme can change without losing data
// already stored.
//
// # Key form
//
// A key is exactly 32 random bytes, written either as 64 hexadecimal digits or
// as base64 (standard or URL alphabet, padded or not). Generate one with
//
//	openssl rand -base64 32
//
// Passphrases are refused on purpose: a short human-chosen string stretched
// into a key would be guessable offline by anyone holding the database file.
//
// Several keys may be given, separated by commas. The first one encrypts; all
// of them decrypt. To rotate, put the new key first and keep the old one after
// it until every stored secret has been rewritten.
//
// # Format (version 1)
//
//	0x01 | key id (4 bytes) | nonce (12 bytes) | AES-256-GCM ciphertext and tag
//
// The key id is the first 4 bytes of HMAC-SHA-256(key, "p2pserver key id"). It
// lets Open pick the right key and report "encrypted with another key" instead
// of a bare authentication failure; it reveals nothing usable about the key.
package secrets

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// KeySize is the length in bytes of a secret key.
const KeySize = 32

// version1 is the format byte of the current sealed-message layout.
const version1 byte = 1

const (
	keyIDSize = 4
	nonceSize = 12
	// headerSize is everything before the GCM ciphertext in a version 1 message.
	headerSize = 1 + keyIDSize + nonceSize
)

// ErrNoKey is returned by Seal and Open on a nil *Cipher: the server has no
// secret key configured, so secrets can be neither stored nor read.
var ErrNoKey = errors.New("secrets: no secret key configured (set -secret-key or P2P_SECRET_KEY)")

// ErrWrongKey is returned by Open when the message was sealed with a key the
// Cipher does not hold.
var ErrWrongKey = errors.New("secrets: data was encrypted with a different secret key (start with the key this database was made with; -secret-key takes old and new keys comma-separated to rotate)")

// ErrCorrupt is returned by Open when the message is malformed or fails
// authentication under the matching key.
var ErrCorrupt = errors.New("secrets: encrypted data is corrupt or was tampered with")

// Cipher seals and opens secrets. It is safe for concurrent use. A nil *Cipher
// is valid and means "no key configured": Seal and Open return ErrNoKey.
type Cipher struct {
	keys []key // keys[0] seals
}

type key struct {
	id   [keyIDSize]byte
	aead cipher.AEAD
}

// NewCipher builds a Cipher from one or more comma-separated keys in the form
// described in the package documentation. The error never contains key material.
func NewCipher(keys string) (*Cipher, error) {
	var c Cipher
	for i, field := range strings.Split(keys, ",") {
		field = strings.TrimSpace(field)
		if field == "" {
			continue
		}
		raw, err := decodeKey(field)
		if err != nil {
			return nil, fmt.Errorf("secrets: key %d: %w", i+1, err)
		}
		k, err := newKey(raw)
		if err != nil {
			return nil, fmt.Errorf("secrets: key %d: %w", i+1, err)
		}
		for _, prev := range c.keys {
			if prev.id == k.id {
				return nil, fmt.Errorf("secrets: key %d is given twice", i+1)
			}
		}
		c.keys = append(c.keys, k)
	}
	if len(c.keys) == 0 {
		return nil, errors.New("secrets: empty key")
	}
	return &c, nil
}

// decodeKey accepts 64 hex digits or base64 of exactly 32 bytes.
func decodeKey(s string) ([]byte, error) {
	if len(s) == 2*KeySize {
		if b, err := hex.DecodeString(s); err == nil {
			return b, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		b, err := enc.DecodeString(s)
		if err != nil {
			continue
		}
		if len(b) != KeySize {
			return nil, fmt.Errorf("decodes to %d bytes, want %d (generate one with: openssl rand -base64 32)", len(b), KeySize)
		}
		return b, nil
	}
	return nil, errors.New("not 32 bytes in base64 or hex (generate one with: openssl rand -base64 32)")
}

func newKey(raw []byte) (key, error) {
	block, err := aes.NewCipher(raw)
	if err != nil {
		return key{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return key{}, err
	}
	mac := hmac.New(sha256.New, raw)
	mac.Write([]byte("p2pserver key id"))
	var k key
	copy(k.id[:], mac.Sum(nil))
	k.aead = aead
	return k, nil
}

// Seal encrypts plaintext with the first key. Every call uses a fresh random
// nonce, so sealing the same plaintext twice gives different outputs.
func (c *Cipher) Seal(plaintext []byte) ([]byte, error) {
	if c == nil {
		return nil, ErrNoKey
	}
	k := c.keys[0]
	out := make([]byte, headerSize, headerSize+len(plaintext)+k.aead.Overhead())
	out[0] = version1
	copy(out[1:], k.id[:])
	nonce := out[1+keyIDSize : headerSize]
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("secrets: nonce: %w", err)
	}
	// The header is authenticated as associated data, so a changed version or
	// key id is detected like a changed ciphertext.
	return k.aead.Seal(out, nonce, plaintext, out[:headerSize]), nil
}

// Open decrypts a message produced by Seal with any of the Cipher's keys.
func (c *Cipher) Open(ciphertext []byte) ([]byte, error) {
	if c == nil {
		return nil, ErrNoKey
	}
	if len(ciphertext) < headerSize || ciphertext[0] != version1 {
		return nil, ErrCorrupt
	}
	id := ciphertext[1 : 1+keyIDSize]
	for _, k := range c.keys {
		if !bytes.Equal(k.id[:], id) {
			continue
		}
		nonce := ciphertext[1+keyIDSize : headerSize]
		plain, err := k.aead.Open(nil, nonce, ciphertext[headerSize:], ciphertext[:headerSize])
		if err != nil {
			return nil, ErrCorrupt
		}
		return plain, nil
	}
	return nil, ErrWrongKey
}

// NeedsRotation reports whether ciphertext was sealed with a key other than
// the current (first) one, so a caller can re-seal it after a key rotation.
func (c *Cipher) NeedsRotation(ciphertext []byte) bool {
	if c == nil || len(ciphertext) < headerSize {
		return false
	}
	return !bytes.Equal(ciphertext[1:1+keyIDSize], c.keys[0].id[:])
}
