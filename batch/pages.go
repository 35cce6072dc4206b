package batch

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/url"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/store"
)

// A source payer's next links must end. A job remembers the pages it has
// read (in the same transaction as each page), so that a next link back to
// one of them fails the job at once, and it stops at a ceiling of pages
// and of resources (Config.MaxPages, Config.MaxResources) for sources whose
// links never repeat and never end.
//
//	batch_pages_read: job id, sha-256 of the page URL -> page number (until the job ends)
const pagesReadBucket = "batch_pages_read"

// Default ceilings of one job, sized for five years of one member's data
// with room to spare: a member with a chronic condition has some thousands
// of claims, encounters, observations and medication records a year; the
// page ceiling allows pages as small as ten resources.
const (
	DefaultMaxResources = 100_000
	DefaultMaxPages     = 10_000
)

func pageReadKey(job int64, url string) []byte {
	sum := sha256.Sum256([]byte(samePage(url)))
	return append(idKey(job), sum[:]...)
}

// samePage is the form of a page URL under which links that name the same
// page compare equal, so that a source cannot evade the repeated-link
// check by writing a link otherwise: scheme and host in lower case, no
// default port, the path with its percent-encoding made canonical
// (%24everything is $everything), the query parameters in one order with
// one encoding (a FHIR search's meaning does not depend on the order of
// its parameters, http.html#search; the values of one parameter keep
// theirs), no fragment. A URL that does not parse is its own form.
func samePage(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	u.Scheme = strings.ToLower(u.Scheme)
	host := strings.ToLower(u.Host)
	if (u.Scheme == "https" && strings.HasSuffix(host, ":443")) || (u.Scheme == "http" && strings.HasSuffix(host, ":80")) {
		host = host[:strings.LastIndexByte(host, ':')]
	}
	u.Host = host
	u.RawPath = "" // EscapedPath then encodes Path canonically
	if q, err := url.ParseQuery(u.RawQuery); err == nil {
		u.RawQuery = q.Encode()
	}
	u.Fragment, u.RawFragment = "", ""
	return u.String()
}

// pageRead returns the number of the page of job that was read from url, 0
// when none was.
func pageRead(tx *store.Tx, job int64, url string) int {
	v := tx.KV(pagesReadBucket).Get(pageReadKey(job, url))
	if len(v) != 8 {
		return 0
	}
	return int(binary.BigEndian.Uint64(v))
}

// markPageRead records that page n of job was read from url.
func markPageRead(tx *store.Tx, job int64, url string, n int) error {
	return tx.KV(pagesReadBucket).Put(pageReadKey(job, url), binary.BigEndian.AppendUint64(nil, uint64(n)))
}

// forgetPagesRead drops job's record of the pages it read, when it ends.
func forgetPagesRead(tx *store.Tx, job int64) error {
	prefix := idKey(job)
	kv := tx.KV(pagesReadBucket)
	var keys [][]byte
	if err := kv.Scan(prefix, func(k, _ []byte) (bool, error) {
		if !bytes.HasPrefix(k, prefix) {
			return false, nil
		}
		keys = append(keys, k)
		return true, nil
	}); err != nil {
		return err
	}
	for _, k := range keys {
		if err := kv.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// repeatedLink is the failure reason of a next link that leads back to
// page n, already read.
func repeatedLink(page int, next string, n int) string {
	return fmt.Sprintf("the source payer's next link on page %d leads back to page %d, already read (%s): its pages would never end", page, n, clip(next, 300))
}
