package healthietest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
)

// SignWebhook returns the headers Healthie sends with a webhook, following
// its documentation ("Signed payloads"): Content-Type application/json,
// Content-Digest "SHA-256=<hex SHA-256 of the body>", Signature-Input naming
// the signed components, and Signature "sig1=<hex HMAC-SHA256>" computed
// with secret over
//
//	"<method lowercased> <path> <query> <digest> application/json <body length>"
//
// where digest is the Content-Digest value after its "=".
func SignWebhook(secret, method, path, query string, body []byte) http.Header {
	sum := sha256.Sum256(body)
	digest := hex.EncodeToString(sum[:])
	data := strings.Join([]string{strings.ToLower(method), path, query, digest, "application/json", strconv.Itoa(len(body))}, " ")
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(data))
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("Content-Digest", "SHA-256="+digest)
	h.Set("Signature-Input", `sig1=("@method" "@path" "@query" "content-digest" "content-type" "content-length")`)
	h.Set("Signature", "sig1="+hex.EncodeToString(mac.Sum(nil)))
	return h
}
