package oidcservers

import (
	"regexp"
	"strings"
)

// credentials are what an answer may quote of a request's credentials:
// an Authorization header's value, a JWT (an access token, a client
// assertion), a client_secret or client_assertion form field.
var credentials = regexp.MustCompile(`(?i)\b(bearer|basic)\s+[a-z0-9\-._~+/]+=*|\beyJ[a-zA-Z0-9_\-]+\.[a-zA-Z0-9_\-]*(\.[a-zA-Z0-9_\-]*)?|\b(client_secret|client_assertion|access_token|refresh_token)=[^&\s"]*`)

// RedactCredentials replaces in s, a text another party sent (a token
// endpoint's error_description, an OperationOutcome's diagnostics), each
// of the secrets given (8 bytes or longer: the client secret, the
// assertion or access token sent) and anything shaped like a credential
// (an Authorization header's value, a JWT, a client_secret,
// client_assertion, access_token or refresh_token form field) with
// "[redacted]", so that what is shown or logged of it never holds one.
func RedactCredentials(s string, secrets ...string) string {
	for _, sec := range secrets {
		if len(sec) >= 8 {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	return credentials.ReplaceAllString(s, "[redacted]")
}
