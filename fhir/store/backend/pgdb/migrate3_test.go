package pgdb

import (
	"bytes"
	"context"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// TestIndexIDsBecomeBytes: schema version 3 turns p2p_index.id from
// text, where an id in 16 bytes was kept as 0x01 and 32 hexadecimal
// characters, into bytea holding the id part of the store's key as it
// is. Every key written before reads back byte for byte, in the same
// order, and the rows are 16 bytes shorter.
func TestIndexIDsBecomeBytes(t *testing.T) {
	ctx := context.Background()
	url, pool := poolAtVersion(t, 2)
	uuid := []byte{0x01, 0xa2, 0x2c, 0xf7, 0xcb, 0xf7, 0x7a, 0xfc, 0x00, 0x7d, 0xb6, 0x7f, 0xe8, 0xe1, 0x05, 0xbd}
	// Keys of I:Patient:name as the store makes them (entry key 0x00
	// id), in byte order, and the id column version 2 kept for each.
	rows := []struct {
		key   []byte
		v2col string
	}{
		{append([]byte("ann\x00\x01"), uuid...), "\x01" + "01a22cf7cbf77afc007db67fe8e105bd"},
		{[]byte("ann\x00P1"), "P1"},
		{[]byte("ann\x00p-é"), "p-é"},
		{append([]byte("anna\x00\x01"), bytes.Repeat([]byte{0xff}, 16)...), "\x01" + "ffffffffffffffffffffffffffffffff"},
		{[]byte("bob\x00a"), "a"},
	}
	if _, err := pool.Exec(ctx, `INSERT INTO p2p_search_params (ix, type, param) VALUES (1, 'Patient', 'name');
INSERT INTO p2p_buckets (name) VALUES ('I:Patient:name')`); err != nil {
		t.Fatal(err)
	}
	for i, r := range rows {
		k, _, _ := bytes.Cut(r.key, []byte{0})
		if _, err := pool.Exec(ctx, `INSERT INTO p2p_index (ix, key, id, payload) VALUES (1, $1, $2, $3)`, k, r.v2col, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}

	d, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var version int
	var idBytes int64
	if err := pool.QueryRow(ctx, `SELECT (SELECT max(version) FROM p2p_schema), (SELECT sum(octet_length(id)) FROM p2p_index)`).Scan(&version, &idBytes); err != nil {
		t.Fatal(err)
	}
	if version != len(migrations) {
		t.Fatalf("schema version %d, want %d", version, len(migrations))
	}
	if want := int64(17 + 2 + len("p-é") + 17 + 1); idBytes != want {
		t.Errorf("the ids take %d bytes, want %d", idBytes, want)
	}
	err = d.View(ctx, func(tx backend.Tx) error {
		b := tx.Bucket([]byte("I:Patient:name"))
		if b == nil {
			t.Fatal("I:Patient:name is gone")
		}
		c := b.Cursor()
		i := 0
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if i >= len(rows) {
				t.Fatalf("extra key %q", k)
			}
			if !bytes.Equal(k, rows[i].key) || !bytes.Equal(v, []byte{byte(i)}) {
				t.Errorf("key %d: %q = %v, want %q = %v", i, k, v, rows[i].key, []byte{byte(i)})
			}
			i++
		}
		if i != len(rows) {
			t.Errorf("%d keys, want %d", i, len(rows))
		}
		// A seek into the 16-byte ids and a read of one key.
		if k, _ := c.Seek([]byte("ann\x00\x01\x01\xa2")); !bytes.Equal(k, rows[0].key) {
			t.Errorf("seek: %q, want %q", k, rows[0].key)
		}
		if v := b.Get(rows[3].key); !bytes.Equal(v, []byte{3}) {
			t.Errorf("get %q: %v", rows[3].key, v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
