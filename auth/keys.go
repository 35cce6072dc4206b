package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

// SigningAlgs are the JWS algorithms of the keys Keys makes and of the
// client assertions the token endpoint accepts: the two SMART App Launch 2
// names (client-confidential-asymmetric: clients SHALL support both, the
// server at least one).
var SigningAlgs = []jose.SignatureAlgorithm{jose.RS384, jose.ES384}

// rsaBits is the size of the RSA keys Keys makes.
const rsaBits = 3072

// KeysConfig sets up a Keys.
type KeysConfig struct {
	// Bucket is the name of the database bucket holding the keys: one per
	// purpose (the access tokens' keys, this payer's own client keys), so
	// that a key signs for one purpose only.
	Bucket string
	// Alg is the algorithm of the keys made from now on: jose.RS384 or
	// jose.ES384. Keys made earlier keep theirs.
	Alg jose.SignatureAlgorithm
	// RotateEvery is how long one key signs before a new one takes over.
	RotateEvery time.Duration
	// Retain is how long a key stays published after it stopped signing:
	// at least the lifetime of what it signed, so that nothing it signed
	// stops verifying before it expires.
	Retain time.Duration
	// Cipher seals the private keys in the database (-secret-key). It is
	// required.
	Cipher *secrets.Cipher
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Keys are asymmetric signing keys (RS384 or ES384) kept in the database
// with their private parts sealed by the server's secret key: it makes
// them, rotates them on a schedule, signs with the current one, and
// publishes the public halves as a JWK set (RFC 7517), old keys included
// until what they signed has expired. Several processes on one database
// agree on the current key: a new one is written only if no other process
// wrote one first. Its methods are safe for concurrent use.
type Keys struct {
	cfg   KeysConfig
	log   *slog.Logger
	store *store.Store

	mu      sync.Mutex
	current *liveKey             // the key that signs now, opened
	public  map[string]publicKey // kid -> public key, as last read
}

// publicKey is a published key and when it stops being published.
type publicKey struct {
	jwk   jose.JSONWebKey
	until time.Time
}

// liveKey is a key whose private part is open in memory.
type liveKey struct {
	keyRecord
	priv crypto.Signer // *rsa.PrivateKey or *ecdsa.PrivateKey
}

// keyRecord is a key as stored. The private key is PKCS #8 DER, sealed.
type keyRecord struct {
	KID          string          `json:"kid"`
	Alg          string          `json:"alg"`
	Created      time.Time       `json:"created"`
	SignUntil    time.Time       `json:"signUntil"`
	PublishUntil time.Time       `json:"publishUntil"`
	Public       json.RawMessage `json:"public"`
	Sealed       []byte          `json:"sealedPrivateKey"`
}

// NewKeys opens the keys in cfg.Bucket. It does no work until a key is
// needed: call Current (or Start) to make the first one.
func NewKeys(st *store.Store, cfg KeysConfig) (*Keys, error) {
	switch {
	case cfg.Bucket == "":
		return nil, errors.New("auth: keys need a bucket name")
	case cfg.Cipher == nil:
		return nil, secrets.ErrNoKey
	case !slices.Contains(SigningAlgs, cfg.Alg):
		return nil, fmt.Errorf("auth: signing algorithm %q is not RS384 or ES384", cfg.Alg)
	case cfg.RotateEvery <= 0 || cfg.Retain <= 0:
		return nil, errors.New("auth: key rotation period and retention must be positive")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Keys{cfg: cfg, log: cfg.Logger, store: st}, nil
}

// ParseAlg reads a signing algorithm setting: RS384 or ES384.
func ParseAlg(s string) (jose.SignatureAlgorithm, error) {
	for _, a := range SigningAlgs {
		if string(a) == s {
			return a, nil
		}
	}
	return "", fmt.Errorf("%q is not a signing algorithm this server makes keys for; use RS384 or ES384", s)
}

// Sign signs payload (JSON claims) with the current key as a compact JWS
// whose header carries the key's kid, its alg, and typ.
func (k *Keys) Sign(ctx context.Context, typ string, payload []byte) (string, error) {
	cur, err := k.Current(ctx)
	if err != nil {
		return "", err
	}
	return signWith(cur, typ, payload)
}

// signWith signs payload with the opened key cur.
func signWith(cur *liveKey, typ string, payload []byte) (string, error) {
	opts := (&jose.SignerOptions{}).WithType(jose.ContentType(typ)).WithHeader("kid", cur.KID)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(cur.Alg), Key: cur.priv}, opts)
	if err != nil {
		return "", errs.E("auth.sign", errs.Internal, err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", errs.E("auth.sign", errs.Internal, err)
	}
	return jws.CompactSerialize()
}

// Current returns the key that signs now, making one (and forgetting keys
// past their publication) when the last one's signing period is over.
func (k *Keys) Current(ctx context.Context) (*liveKey, error) {
	now := k.cfg.Now()
	k.mu.Lock()
	cur := k.current
	k.mu.Unlock()
	if cur != nil && now.Before(cur.SignUntil) {
		return cur, nil
	}
	return k.rotate(ctx, false)
}

// Rotate makes a new key that signs from now on; the previous one stays
// published for the retention period.
func (k *Keys) Rotate(ctx context.Context) error {
	_, err := k.rotate(ctx, true)
	return err
}

// rotate finds the key that signs now in the database or, if there is
// none (or force), makes one and writes it, unless another process wrote
// one meanwhile.
func (k *Keys) rotate(ctx context.Context, force bool) (*liveKey, error) {
	const op = "auth.keys"
	now := k.cfg.Now()
	var found *keyRecord
	if !force {
		recs, err := k.read(ctx)
		if err != nil {
			return nil, err
		}
		found = signing(recs, now)
	}
	if found == nil {
		// Made outside the write: an RSA key takes a while, and the
		// database's writer must not wait for it.
		rec, err := k.generate(now)
		if err != nil {
			return nil, errs.E(op, errs.Internal, err)
		}
		err = k.store.Write(ctx, func(tx *store.Tx) error {
			kv := tx.KV(k.cfg.Bucket)
			var recs []keyRecord
			if err := kv.Scan(nil, func(key, v []byte) (bool, error) {
				var r keyRecord
				if err := json.Unmarshal(v, &r); err != nil {
					return false, fmt.Errorf("auth: stored key %s: %w", key, err)
				}
				if !now.Before(r.PublishUntil) {
					return true, kv.Delete(key)
				}
				recs = append(recs, r)
				return true, nil
			}); err != nil {
				return err
			}
			if other := signing(recs, now); other != nil && !force {
				// Another process made one meanwhile: use it.
				found = other
				return nil
			}
			if force {
				// The old keys sign no more; they stay published.
				for _, r := range recs {
					if r.SignUntil.After(now) {
						r.SignUntil = now
						r.PublishUntil = now.Add(k.cfg.Retain)
						if err := putRecord(kv, r); err != nil {
							return err
						}
					}
				}
			}
			found = rec
			return putRecord(kv, *rec)
		})
		if err != nil {
			return nil, errs.E(op, err)
		}
		if found == rec {
			k.log.Info("auth: new signing key", "bucket", k.cfg.Bucket, "kid", rec.KID, "alg", rec.Alg, "signs_until", rec.SignUntil)
		}
	}
	live, err := k.open(*found)
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	k.current = live
	k.public = nil // read again: the set changed
	k.mu.Unlock()
	return live, nil
}

func putRecord(kv store.KV, r keyRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return kv.Put([]byte(r.KID), b)
}

// signing is the newest record whose signing period has not ended at
// now. (One made by another process a moment later than now counts: it is
// the one to use.)
func signing(recs []keyRecord, now time.Time) *keyRecord {
	var best *keyRecord
	for i, r := range recs {
		if now.Before(r.SignUntil) && (best == nil || r.Created.After(best.Created)) {
			best = &recs[i]
		}
	}
	return best
}

// read returns the stored keys still published.
func (k *Keys) read(ctx context.Context) ([]keyRecord, error) {
	now := k.cfg.Now()
	var out []keyRecord
	err := k.store.View(ctx, func(tx *store.Tx) error {
		return tx.KV(k.cfg.Bucket).Scan(nil, func(key, v []byte) (bool, error) {
			var r keyRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return false, fmt.Errorf("auth: stored key %s: %w", key, err)
			}
			if now.Before(r.PublishUntil) {
				out = append(out, r)
			}
			return true, nil
		})
	})
	if err != nil {
		return nil, errs.E("auth.keys", err)
	}
	return out, nil
}

// generate makes a new key of the configured algorithm, sealed.
func (k *Keys) generate(now time.Time) (*keyRecord, error) {
	var priv crypto.Signer
	var err error
	switch k.cfg.Alg {
	case jose.RS384:
		priv, err = rsa.GenerateKey(rand.Reader, rsaBits)
	case jose.ES384:
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	default:
		err = fmt.Errorf("auth: no key type for %s", k.cfg.Alg)
	}
	if err != nil {
		return nil, err
	}
	pub := jose.JSONWebKey{Key: priv.Public(), Algorithm: string(k.cfg.Alg), Use: "sig"}
	thumb, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, err
	}
	pub.KeyID = base64.RawURLEncoding.EncodeToString(thumb)
	pubJSON, err := pub.MarshalJSON()
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	sealed, err := k.cfg.Cipher.Seal(der)
	if err != nil {
		return nil, err
	}
	return &keyRecord{KID: pub.KeyID, Alg: string(k.cfg.Alg), Created: now, SignUntil: now.Add(k.cfg.RotateEvery),
		PublishUntil: now.Add(k.cfg.RotateEvery + k.cfg.Retain), Public: pubJSON, Sealed: sealed}, nil
}

// open unseals a record's private key.
func (k *Keys) open(r keyRecord) (*liveKey, error) {
	const op = "auth.keys"
	der, err := k.cfg.Cipher.Open(r.Sealed)
	if err != nil {
		return nil, errs.E(op, errs.Internal, fmt.Sprintf("the signing key %s cannot be opened with the configured -secret-key", r.KID), err)
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, errs.E(op, errs.Internal, err)
	}
	switch priv.(type) {
	case *rsa.PrivateKey, *ecdsa.PrivateKey:
	default:
		return nil, errs.E(op, errs.Internal, fmt.Sprintf("the stored key %s is neither RSA nor EC", r.KID))
	}
	return &liveKey{keyRecord: r, priv: priv.(crypto.Signer)}, nil
}

// JWKS returns the public keys published now: the signing key and those
// that stopped signing within the retention period, newest first.
func (k *Keys) JWKS(ctx context.Context) (jose.JSONWebKeySet, error) {
	keys, err := k.published(ctx)
	if err != nil {
		return jose.JSONWebKeySet{}, err
	}
	set := jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, len(keys))}
	for i, p := range keys {
		set.Keys[i] = p.jwk
	}
	return set, nil
}

// published reads the keys published now, newest first.
func (k *Keys) published(ctx context.Context) ([]publicKey, error) {
	recs, err := k.read(ctx)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(recs, func(a, b keyRecord) int { return b.Created.Compare(a.Created) })
	out := make([]publicKey, 0, len(recs))
	for _, r := range recs {
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(r.Public); err != nil {
			return nil, errs.E("auth.keys", errs.Internal, err)
		}
		out = append(out, publicKey{jwk: jwk, until: r.PublishUntil})
	}
	return out, nil
}

// PublicKey returns the key kid if it is published now, reading the
// database again when it is not among those last read (another process
// may have rotated).
func (k *Keys) PublicKey(ctx context.Context, kid string) (jose.JSONWebKey, bool, error) {
	now := k.cfg.Now()
	k.mu.Lock()
	p, ok := k.public[kid]
	k.mu.Unlock()
	if ok && now.Before(p.until) {
		return p.jwk, true, nil
	}
	keys, err := k.published(ctx)
	if err != nil {
		return jose.JSONWebKey{}, false, err
	}
	m := make(map[string]publicKey, len(keys))
	for _, p := range keys {
		m[p.jwk.KeyID] = p
	}
	k.mu.Lock()
	k.public = m
	k.mu.Unlock()
	p, ok = m[kid]
	return p.jwk, ok, nil
}
