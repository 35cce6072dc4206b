package notify

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// HeaderMask is what every read, search and history of a Subscription
// shows in place of a channel.header value ("Authorization: ******"): the
// values are secrets (a partner's bearer token, an API key), kept
// encrypted with the server's secret key apart from the resource, sent
// only to the endpoint, never returned and never logged. A header written
// back with this value keeps the value stored for that header name (its
// n-th occurrence for the n-th), so a client may read a Subscription,
// change it and write it back; a header with any other value replaces it.
const HeaderMask = "******"

// bucketHeaders keeps each Subscription's channel.header values, sealed
// (secrets.Cipher): Subscription id -> sealed JSON list of {name, value}.
const bucketHeaders = "notify_headers"

type sealedHeader struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// storedHeaders opens the header values kept for Subscription id; nil
// when it has none.
func (n *Service) storedHeaders(tx *store.Tx, id string) ([]header, error) {
	raw := tx.KV(bucketHeaders).Get([]byte(id))
	if raw == nil {
		return nil, nil
	}
	plain, err := n.cipher.Open(raw)
	if err != nil {
		return nil, err
	}
	var list []sealedHeader
	if err := json.Unmarshal(plain, &list); err != nil {
		return nil, fmt.Errorf("notify: the stored headers of Subscription/%s: %w", id, err)
	}
	out := make([]header, len(list))
	for i, h := range list {
		out[i] = header{h.Name, h.Value}
	}
	return out, nil
}

func (n *Service) putHeaders(tx *store.Tx, id string, hs []header) error {
	kv := tx.KV(bucketHeaders)
	if len(hs) == 0 {
		return kv.Delete([]byte(id))
	}
	list := make([]sealedHeader, len(hs))
	for i, h := range hs {
		list[i] = sealedHeader{h.name, h.value}
	}
	plain, err := json.Marshal(list)
	if err != nil {
		return err
	}
	sealed, err := n.cipher.Seal(plain)
	if err != nil {
		return err
	}
	return kv.Put([]byte(id), sealed)
}

// sealHeaders takes the channel.header values out of doc, whatever its
// status: they are kept sealed under the Subscription's id, and doc keeps
// each header's name with HeaderMask as its value. A masked value stands
// for the value stored for that name. It returns the headers with their
// values; each problem is one issue.
func (n *Service) sealHeaders(tx *store.Tx, doc *store.Doc) ([]header, []errs.Issue) {
	ch, _ := doc.Map["channel"].(map[string]any)
	raw := asList(ch["header"])
	var issues []errs.Issue
	if len(raw) == 0 {
		if err := n.putHeaders(tx, doc.ID, nil); err != nil {
			issues = append(issues, errs.Issue{Code: "exception", Path: "Subscription.channel.header", Message: "the stored headers could not be removed"})
		}
		return nil, issues
	}
	var stored []header
	if tx.KV(bucketHeaders).Get([]byte(doc.ID)) != nil {
		var err error
		if stored, err = n.storedHeaders(tx, doc.ID); err != nil {
			issues = append(issues, errs.Issue{Code: "security", Path: "Subscription.channel.header",
				Message: "the stored header values cannot be decrypted with this server's secret key; write every value again"})
		}
	}
	used := map[string]int{}
	var out []header
	var shown []any
	for i, h := range raw {
		str, _ := h.(string)
		name, value, ok := strings.Cut(str, ":")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		path := fmt.Sprintf("Subscription.channel.header[%d]", i)
		switch {
		case !ok || !validHeaderName(name):
			issues = append(issues, errs.Issue{Code: "value", Path: path, Message: "a header must read \"Name: value\" with a valid header name"})
			continue
		case strings.ContainsAny(value, "\r\n\x00"):
			issues = append(issues, errs.Issue{Code: "value", Path: path, Message: "a header value must not contain line breaks"})
			continue
		}
		name = http.CanonicalHeaderKey(name)
		if value == HeaderMask {
			k := used[name]
			used[name]++
			found := false
			for _, s := range stored {
				if s.name != name {
					continue
				}
				if k == 0 {
					value, found = s.value, true
					break
				}
				k--
			}
			if !found {
				issues = append(issues, errs.Issue{Code: "required", Path: path, Message: fmt.Sprintf(
					"%s is the hidden value of a header, and this Subscription has no stored value for %s to keep; give the value", HeaderMask, name)})
				continue
			}
		}
		out = append(out, header{name, value})
		shown = append(shown, name+": "+HeaderMask)
	}
	if n.cipher == nil {
		issues = append(issues, errs.Issue{Code: "security", Path: "Subscription.channel.header",
			Message: "header values are secrets this server keeps encrypted, and it has no secret key (-secret-key): leave channel.header out or configure a key"})
	}
	if len(issues) > 0 {
		return nil, issues
	}
	if err := n.putHeaders(tx, doc.ID, out); err != nil {
		return nil, []errs.Issue{{Code: "exception", Path: "Subscription.channel.header", Message: "the header values could not be stored encrypted"}}
	}
	masked := make(map[string]any, len(ch))
	for k, v := range ch {
		masked[k] = v
	}
	masked["header"] = shown
	if err := doc.Set("channel", masked); err != nil {
		return nil, []errs.Issue{{Code: "exception", Path: "Subscription.channel", Message: "the channel could not be written"}}
	}
	return out, nil
}

// hasPlainHeaders reports whether a stored Subscription's JSON carries a
// channel.header value that is not masked (written before values were
// kept as secrets).
func hasPlainHeaders(raw []byte) bool {
	if !bytes.Contains(raw, []byte(`"header"`)) {
		return false
	}
	var s struct {
		Channel struct {
			Header []string `json:"header"`
		} `json:"channel"`
	}
	if json.Unmarshal(raw, &s) != nil {
		return false
	}
	for _, h := range s.Channel.Header {
		if _, v, _ := strings.Cut(h, ":"); strings.TrimSpace(v) != HeaderMask {
			return true
		}
	}
	return false
}

// secureStored brings stored Subscriptions to the rule that header values
// live sealed apart from the resource: values written before (in every
// version, current and past) are sealed, and masked in place; values
// sealed with an older secret key are sealed again with the current one.
// Without a key, stored secrets of either kind stop the start, so that a
// server never runs unable to deliver, or holding plain secrets.
func (n *Service) secureStored(tx *store.Tx) error {
	ids := tx.AllIDs("Subscription")
	var plain []string
	for _, id := range ids {
		v, err := tx.Read("Subscription", id)
		last := int64(0)
		if v != nil {
			last = v.VersionID
		} else if err != nil && !errs.Is(err, errs.Gone) {
			continue
		}
		for vid := int64(1); vid <= last; vid++ {
			hv, err := tx.VRead("Subscription", id, vid)
			if err == nil && hasPlainHeaders(hv.JSON) {
				plain = append(plain, id)
				break
			}
		}
	}
	sealed := 0
	if err := tx.KV(bucketHeaders).Scan(nil, func(_, _ []byte) (bool, error) { sealed++; return true, nil }); err != nil {
		return err
	}
	switch {
	case n.cipher == nil && len(plain) > 0:
		return fmt.Errorf("stored Subscriptions carry channel.header values in plain text (written before they were kept as secrets); set -secret-key (or P2P_SECRET_KEY) so that they are encrypted")
	case n.cipher == nil && sealed > 0:
		return fmt.Errorf("stored Subscriptions have encrypted channel.header values but no secret key is configured: set -secret-key or P2P_SECRET_KEY to the key they were stored with")
	}
	// Re-seal with the current key.
	var rotate []string
	err := tx.KV(bucketHeaders).Scan(nil, func(k, v []byte) (bool, error) {
		if _, err := n.cipher.Open(v); err != nil {
			return false, fmt.Errorf("the channel.header values of Subscription/%s: %w", k, err)
		}
		if n.cipher.NeedsRotation(v) {
			rotate = append(rotate, string(k))
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	for _, id := range rotate {
		hs, err := n.storedHeaders(tx, id)
		if err != nil {
			return err
		}
		if err := n.putHeaders(tx, id, hs); err != nil {
			return err
		}
	}
	for _, id := range plain {
		if err := n.sealPlain(tx, id); err != nil {
			return fmt.Errorf("secure the channel.header values of Subscription/%s: %w", id, err)
		}
	}
	return nil
}

// sealPlain seals the plain header values of Subscription id (those of its
// current version are the ones kept) and masks them in every version.
func (n *Service) sealPlain(tx *store.Tx, id string) error {
	v, err := tx.Read("Subscription", id)
	if v == nil {
		return err
	}
	for vid := int64(1); vid <= v.VersionID; vid++ {
		hv, err := tx.VRead("Subscription", id, vid)
		if err != nil || !hasPlainHeaders(hv.JSON) {
			continue
		}
		doc, err := n.fs.ParseResource(hv.JSON, "Subscription")
		if err != nil {
			return err
		}
		if vid != v.VersionID {
			// Only the current version's values are kept; masking an
			// older one must not replace them.
			saved := tx.KV(bucketHeaders).Get([]byte(id))
			_, issues := n.sealHeaders(tx, doc)
			if saved == nil {
				err = tx.KV(bucketHeaders).Delete([]byte(id))
			} else {
				err = tx.KV(bucketHeaders).Put([]byte(id), saved)
			}
			if err != nil {
				return err
			}
			if len(issues) > 0 {
				return errors.New(issues[0].Message)
			}
		} else if _, issues := n.sealHeaders(tx, doc); len(issues) > 0 {
			return errors.New(issues[0].Message)
		}
		if err := tx.Redact("Subscription", id, vid, doc.JSON); err != nil {
			return err
		}
	}
	return nil
}
