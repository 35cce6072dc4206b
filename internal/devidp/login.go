package devidp

import (
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"strings"

	"github.com/zitadel/oidc/v3/pkg/op"
)

// serveLogin is the login page of the authorization-code flow. GET shows
// the form for ?authRequestID=; POST checks authRequestID, username and
// password and, when they are right, sends the browser on to the
// authorization callback, which redirects it to the client with the
// code. A wrong password shows the form again with 401.
func (p *Provider) serveLogin(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	id := r.Form.Get("authRequestID")
	ar, ok := p.store.request(id)
	if !ok {
		p.renderLogin(w, http.StatusBadRequest, loginView{Error: errLoginExpired.Error()})
		return
	}
	view := loginView{ID: id, Client: ar.clientID, Scopes: strings.Join(ar.scopes, " "), Username: ar.loginHint}
	switch r.Method {
	case http.MethodGet:
		p.renderLogin(w, http.StatusOK, view)
	case http.MethodPost:
		username := r.PostForm.Get("username")
		err := p.store.login(id, username, r.PostForm.Get("password"))
		switch {
		case errors.Is(err, errWrongPassword):
			view.Username, view.Error = username, err.Error()
			p.renderLogin(w, http.StatusUnauthorized, view)
		case err != nil:
			p.renderLogin(w, http.StatusBadRequest, loginView{Error: err.Error()})
		default:
			ctx := op.ContextWithIssuer(r.Context(), p.issuer)
			http.Redirect(w, r, op.AuthCallbackURL(p.op)(ctx, url.QueryEscape(id)), http.StatusFound)
		}
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

type loginView struct {
	ID, Client, Scopes, Username, Error string
}

func (p *Provider) renderLogin(w http.ResponseWriter, status int, v loginView) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_ = loginPage.Execute(w, v)
}

var loginPage = template.Must(template.New("login").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Log in</title></head>
<body style="font-family:sans-serif;max-width:28em;margin:3em auto">
<h1>Log in</h1>
<p style="color:#555">Development OpenID provider: do not use real passwords.</p>
{{if .Error}}<p role="alert" style="color:#b00">{{.Error}}</p>{{end}}
{{if .ID}}
<p><strong>{{.Client}}</strong> asks for access to your record ({{.Scopes}}).</p>
<form method="post" action="login">
<input type="hidden" name="authRequestID" value="{{.ID}}">
<p><label>Username<br><input name="username" value="{{.Username}}" autocomplete="username" required autofocus></label></p>
<p><label>Password<br><input name="password" type="password" autocomplete="current-password" required></label></p>
<p><button type="submit">Log in and allow</button></p>
</form>
{{end}}
</body></html>
`))

// serveCode shows the authorization code (or error) a client was
// redirected with, for trying the flow by hand without a member portal.
func serveCode(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if e := q.Get("error"); e != "" {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte("The authorization failed: " + e + ": " + q.Get("error_description") + "\n"))
		return
	}
	_, _ = w.Write([]byte("Authorization code: " + q.Get("code") + "\nState: " + q.Get("state") +
		"\nExchange the code at the token endpoint (grant_type=authorization_code) with your code_verifier within 10 minutes.\n"))
}
