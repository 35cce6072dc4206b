package oidcservers

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/store/storetest"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

func newKey(t testing.TB) string {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b)
}

func newCipher(t testing.TB, key string) *secrets.Cipher {
	t.Helper()
	c, err := secrets.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dbStore is a store over its own database; Close closes both.
type dbStore struct {
	*store.Store
	db store.DB
}

func (s dbStore) Close() error {
	s.Store.Close()
	return s.db.Close()
}

var registry = search.NewRegistry(spec.R4())

// openDB opens the store on the database dsn.
func openDB(t testing.TB, dsn string) dbStore {
	t.Helper()
	db := storetest.OpenDB(t, dsn)
	st, err := store.Open(db, registry, nil)
	if err != nil {
		db.Close()
		t.Fatal(err)
	}
	return dbStore{st, db}
}

func newRepo(t testing.TB, c *secrets.Cipher) *Repository {
	t.Helper()
	db := openDB(t, storetest.DSN(t))
	t.Cleanup(func() { db.Close() })
	r, err := NewRepository(db.Store, c)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRepositoryCRUD(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRepo(t, newCipher(t, newKey(t)))

	a, err := r.Create(ctx, validServer())
	if err != nil {
		t.Fatal(err)
	}
	b := validServer()
	b.Name, b.Issuer, b.ClientSecret = "B", "https://payer-b.example", ""
	b, err = r.Create(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if a.PID != 1 || b.PID != 2 {
		t.Errorf("pids = %d, %d; want 1, 2", a.PID, b.PID)
	}

	got, err := r.Get(ctx, a.PID)
	if err != nil {
		t.Fatal(err)
	}
	if got != a || got.ClientSecret != "s3cr3t-value" {
		t.Errorf("Get = %+v, want %+v", got, a)
	}
	list, err := r.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].PID != 1 || list[1].PID != 2 || list[0].ClientSecret != "" {
		t.Errorf("List = %+v", list)
	}

	up, err := r.Update(ctx, a.PID, func(s *Server) error { s.Name = "A2"; s.PID = 99; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if up.Name != "A2" || up.PID != a.PID || up.ClientSecret != a.ClientSecret {
		t.Errorf("Update = %+v", up)
	}
	if _, err := r.Update(ctx, 42, func(*Server) error { return nil }); !errs.Is(err, errs.NotFound) {
		t.Errorf("Update missing: %v", err)
	}
	if _, err := r.Update(ctx, a.PID, func(s *Server) error { s.FHIREndpoint = "nope"; return nil }); !errs.Is(err, errs.Invalid) {
		t.Errorf("Update to invalid: %v", err)
	}
	boom := errors.New("boom")
	if _, err := r.Update(ctx, a.PID, func(*Server) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("Update change error: %v", err)
	}

	if err := r.Delete(ctx, a.PID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Get(ctx, a.PID); !errs.Is(err, errs.NotFound) {
		t.Errorf("Get deleted: %v", err)
	}
	if err := r.Delete(ctx, a.PID); !errs.Is(err, errs.NotFound) {
		t.Errorf("Delete twice: %v", err)
	}
	// pids are not reused.
	c, err := r.Create(ctx, validServer())
	if err != nil {
		t.Fatal(err)
	}
	if c.PID != 3 {
		t.Errorf("pid after delete = %d, want 3", c.PID)
	}
}

func TestRepositoryIssuerUnique(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRepo(t, newCipher(t, newKey(t)))
	a, err := r.Create(ctx, validServer())
	if err != nil {
		t.Fatal(err)
	}
	for _, iss := range []string{a.Issuer, a.Issuer + "/", strings.ToUpper(a.Issuer[:8]) + a.Issuer[8:]} {
		dup := validServer()
		dup.Issuer = iss
		_, err := r.Create(ctx, dup)
		if !errs.Is(err, errs.Conflict) {
			t.Errorf("Create with issuer %q: %v, want Conflict", iss, err)
			continue
		}
		_, issues := errs.Public(err)
		if len(issues) != 1 || issues[0].Path != "issuer" {
			t.Errorf("issues = %+v", issues)
		}
	}
	other := validServer()
	other.Issuer = "https://other.example"
	b, err := r.Create(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Update(ctx, b.PID, func(s *Server) error { s.Issuer = a.Issuer + "/"; return nil }); !errs.Is(err, errs.Conflict) {
		t.Errorf("Update onto another's issuer: %v", err)
	}
	// A definition keeps its own issuer, even respelled.
	if _, err := r.Update(ctx, a.PID, func(s *Server) error { s.Issuer += "/"; return nil }); err != nil {
		t.Errorf("Update own issuer with a trailing slash: %v", err)
	}
	got, err := r.ByIssuer(ctx, strings.TrimSuffix(a.Issuer, "/")+"/")
	if err != nil || got.PID != a.PID || got.ClientSecret == "" {
		t.Errorf("ByIssuer = %+v, %v", got, err)
	}
	if _, err := r.ByIssuer(ctx, "https://unknown.example"); !errs.Is(err, errs.NotFound) {
		t.Errorf("ByIssuer unknown: %v", err)
	}
}

func TestRepositorySecretEncryptedAtRest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := storetest.DSN(t)
	key := newKey(t)
	db := openDB(t, path)
	r, err := NewRepository(db.Store, newCipher(t, key))
	if err != nil {
		t.Fatal(err)
	}
	s := validServer()
	s.ClientSecret = "a-very-distinctive-client-secret"
	if _, err := r.Create(ctx, s); err != nil {
		t.Fatal(err)
	}
	db.Close()

	raw := storetest.Dump(t, path)
	if bytes.Contains(raw, []byte("a-very-distinctive-client-secret")) {
		t.Fatal("the client secret is in the database file in clear")
	}
	if !bytes.Contains(raw, []byte("sourcepayerA.example")) {
		t.Fatal("test is broken: the definition is not in the file either")
	}

	// Restart without a key: refused, with a message naming the setting.
	db = openDB(t, path)
	_, err = NewRepository(db.Store, nil)
	if err == nil || !strings.Contains(err.Error(), "P2P_SECRET_KEY") {
		t.Errorf("NewRepository without key = %v, want a refusal naming P2P_SECRET_KEY", err)
	}
	// With another key: refused.
	if _, err := NewRepository(db.Store, newCipher(t, newKey(t))); !errors.Is(err, secrets.ErrWrongKey) {
		t.Errorf("NewRepository with another key = %v, want ErrWrongKey", err)
	}
	// With the key: the secret is back.
	r, err = NewRepository(db.Store, newCipher(t, key))
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.Get(ctx, 1)
	if err != nil || got.ClientSecret != "a-very-distinctive-client-secret" {
		t.Errorf("after restart: %+v, %v", got, err)
	}
	db.Close()
}

func TestRepositoryKeyRotation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := storetest.DSN(t)
	oldKey, newKeyS := newKey(t), newKey(t)
	db := openDB(t, path)
	defer db.Close()
	r, err := NewRepository(db.Store, newCipher(t, oldKey))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Create(ctx, validServer()); err != nil {
		t.Fatal(err)
	}
	// Start with the new key first and the old one after it: secrets are re-sealed.
	if _, err := NewRepository(db.Store, newCipher(t, newKeyS+","+oldKey)); err != nil {
		t.Fatal(err)
	}
	r, err = NewRepository(db.Store, newCipher(t, newKeyS))
	if err != nil {
		t.Fatalf("the new key alone cannot open the rotated secrets: %v", err)
	}
	if got, err := r.Get(ctx, 1); err != nil || got.ClientSecret != validServer().ClientSecret {
		t.Errorf("after rotation: %+v, %v", got, err)
	}
}

func TestRepositoryWithoutKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRepo(t, nil)
	s := validServer()
	_, err := r.Create(ctx, s)
	_, issues := errs.Public(err)
	if !errs.Is(err, errs.Invalid) || len(issues) != 1 || issues[0].Path != "clientSecret" || !strings.Contains(issues[0].Message, "P2P_SECRET_KEY") {
		t.Errorf("Create with secret and no key = %v %+v", err, issues)
	}
	s.ClientSecret = ""
	if _, err := r.Create(ctx, s); err != nil {
		t.Errorf("Create without secret and no key: %v", err)
	}
}

func TestRepositoryInUse(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := newRepo(t, newCipher(t, newKey(t)))
	s, err := r.Create(ctx, validServer())
	if err != nil {
		t.Fatal(err)
	}
	var asked []int64
	r.SetInUseCheck(func(_ context.Context, pid int64) (bool, error) {
		asked = append(asked, pid)
		return pid == s.PID, nil
	})
	if err := r.Delete(ctx, s.PID); !errs.Is(err, errs.Conflict) {
		t.Errorf("Delete in use = %v, want Conflict", err)
	}
	if _, err := r.Get(ctx, s.PID); err != nil {
		t.Errorf("in-use definition was deleted: %v", err)
	}
	if len(asked) != 1 || asked[0] != s.PID {
		t.Errorf("check asked for %v", asked)
	}
	r.SetInUseCheck(func(context.Context, int64) (bool, error) { return false, errors.New("jobs db down") })
	if err := r.Delete(ctx, s.PID); err == nil || errs.KindOf(err) != errs.Internal {
		t.Errorf("Delete with failing check = %v, want Internal", err)
	}
	r.SetInUseCheck(nil)
	if err := r.Delete(ctx, s.PID); err != nil {
		t.Errorf("Delete after removing the check: %v", err)
	}
}
