package store

import (
	"bytes"
	"context"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store/backend"
)

// TestUpgradeIndexesOfClippedValues opens a database whose index holds a long
// value the way earlier versions wrote it (cut to 480 bytes, so the full
// value could not be found and :exact matched the cut), and checks that
// Open indexes it again: the full value is found, the cut is not. The
// resource's id is kept in the old index as text whatever its form, and
// the keys of the cut value must go whether the id is a UUID (kept in 16
// bytes from format 5 on) or not.
func TestUpgradeIndexesOfClippedValues(t *testing.T) {
	for _, id := range []string{"p", "0b6b2f0e-3f3a-4c3e-9d51-2f1f6a0c7e11"} {
		t.Run(id, func(t *testing.T) { testUpgradeIndexesOfClippedValues(t, id) })
	}
}

func testUpgradeIndexesOfClippedValues(t *testing.T, id string) {
	reg := testReg
	path := testDSN(t, "old")
	family := strings.Repeat("Longfamily", 61)
	db, st := openDSN(t, path)
	st.format = 3 // as the old format wrote them
	d := testDoc(t, "Patient", id, `{"resourceType":"Patient","id":"`+id+`","name":[{"family":"`+family+`"}]}`)
	err := st.Write(context.Background(), func(tx *Tx) error {
		if _, err := tx.Put(d, PutOptions{}); err != nil {
			return err
		}
		// Rewrite its entries as the old format had them.
		var old []search.Entry
		for _, e := range tx.EntriesOf("Patient", id) {
			if len(e.Payload) > 480 {
				e = search.Entry{Param: e.Param, Key: e.Key[:2] + string(e.Payload)[:480]}
			}
			old = append(old, e)
		}
		if err := tx.reindex("Patient", id, nil); err != nil {
			return err
		}
		if err := tx.reindex("Patient", id, old); err != nil {
			return err
		}
		return tx.btx.Bucket(metaBucket).Delete(indexFormatKey)
	})
	if err != nil {
		t.Fatal(err)
	}
	find := func(st *Store, param, value string) int {
		var n int
		err := st.View(context.Background(), func(tx *Tx) error {
			q, err := reg.Parse("Patient", url.Values{param: {value}}, search.Options{})
			if err != nil {
				return err
			}
			ids, err := tx.Search(q)
			n = len(ids)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if find(st, "family:exact", family[:480]) != 1 || find(st, "family:exact", family) != 0 {
		t.Fatal("the test did not recreate the old index form")
	}
	st.Close()
	db.Close()

	db, st = openDSN(t, path)
	defer db.Close()
	defer st.Close()
	if n := find(st, "family:exact", family); n != 1 {
		t.Errorf("after the upgrade the full value finds %d resources", n)
	}
	if n := find(st, "family:exact", family[:480]); n != 0 {
		t.Errorf("after the upgrade :exact with the first 480 bytes finds %d resources", n)
	}
	if n := find(st, "family", strings.ToLower(family)); n != 1 {
		t.Errorf("after the upgrade the full value (normalized) finds %d resources", n)
	}
	_ = st.View(context.Background(), func(tx *Tx) error {
		if !bytes.Equal(tx.btx.Bucket(metaBucket).Get(indexFormatKey), []byte(indexFormat)) {
			t.Error("the index format was not recorded")
		}
		return nil
	})
}

// TestOpenRefusesANewerIndexFormat: a database whose indexes a later
// version wrote (index format 6 and up) is refused with an error naming
// the formats, and left as it is, not rewritten to this version's form.
func TestOpenRefusesANewerIndexFormat(t *testing.T) {
	path := testDSN(t, "newer")
	reg := testReg
	db, st := openDSN(t, path)
	err := st.Write(context.Background(), func(tx *Tx) error {
		doc := testDoc(t, "Observation", "0190f4c2-7b1a-7c3e-9a2b-3c4d5e6f7a8b", `{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/1"}}`)
		if _, err := tx.Put(doc, PutOptions{}); err != nil {
			return err
		}
		return tx.btx.Bucket(metaBucket).Put(indexFormatKey, []byte("6"))
	})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	if _, err := Open(db, reg, nil); err == nil || !strings.Contains(err.Error(), "index format is 6") {
		t.Fatalf("Open of a format 6 database: %v, want an error naming format 6", err)
	}
	db.Close()
	db, err = OpenDB(context.Background(), path, DBOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(context.Background(), func(btx backend.Tx) error {
		if f := string(btx.Bucket(metaBucket).Get(indexFormatKey)); f != "6" {
			t.Errorf("the index format became %q", f)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestIndexFormatNumber(t *testing.T) {
	if strconv.Itoa(indexFormatNumber) != indexFormat {
		t.Errorf("indexFormatNumber %d, indexFormat %q", indexFormatNumber, indexFormat)
	}
}
