package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/p2pserver/p2pserver/internal/errs"
)

// errorResponse decodes the error shape and fails the test if the response is
// not exactly that shape.
func errorResponse(t *testing.T, rec *httptest.ResponseRecorder) errorJSON {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("Content-Type = %q, want JSON", ct)
	}
	var body struct {
		Error *errorJSON `json:"error"`
	}
	dec := json.NewDecoder(rec.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil || body.Error == nil {
		t.Fatalf("body is not the error shape: %v", err)
	}
	if body.Error.Code == "" || body.Error.Message == "" {
		t.Fatalf("error without code or message: %+v", body.Error)
	}
	return *body.Error
}

func TestWriteErrorMapsErrors(t *testing.T) {
	var logged bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logged, nil)))
	t.Cleanup(func() { slog.SetDefault(prev) })

	rec := httptest.NewRecorder()
	WriteError(rec, fmt.Errorf("wrapped: %w", &Error{Status: 409, Code: CodeConflict, Message: "taken", Fields: map[string]string{"issuer": "already registered"}}))
	if rec.Code != 409 {
		t.Errorf("status = %d, want 409", rec.Code)
	}
	e := errorResponse(t, rec)
	if e.Code != CodeConflict || e.Fields["issuer"] != "already registered" {
		t.Errorf("error = %+v", e)
	}

	rec = httptest.NewRecorder()
	WriteError(rec, errors.New("open /var/db/secret.db: permission denied"))
	if rec.Code != 500 {
		t.Errorf("status = %d, want 500", rec.Code)
	}
	raw := rec.Body.String()
	e = errorResponse(t, rec)
	if e.Code != CodeInternal || strings.Contains(raw, "permission denied") || strings.Contains(raw, "secret.db") {
		t.Errorf("internal error leaked or miscoded: %s", raw)
	}
	if !strings.Contains(logged.String(), "permission denied") {
		t.Errorf("internal error not logged; log: %s", logged.String())
	}
}

func TestWriteJSONUnencodable(t *testing.T) {
	rec := httptest.NewRecorder()
	WriteJSON(rec, 200, map[string]any{"f": func() {}})
	if rec.Code != 500 {
		t.Errorf("status = %d, want 500", rec.Code)
	}
	errorResponse(t, rec)
}

func TestDecodeJSON(t *testing.T) {
	t.Parallel()
	type payload struct {
		Name  string  `json:"name"`
		Count int     `json:"count"`
		Opt   *string `json:"opt"`
	}
	tests := []struct {
		name        string
		contentType string
		body        string
		max         int64
		status      int
		code        string
		field       string
	}{
		{name: "ok", contentType: "application/json", body: `{"name":"a","count":2}`, status: 0},
		{name: "ok charset", contentType: "application/json; charset=utf-8", body: `{"name":"a"}`, status: 0},
		{name: "ok +json", contentType: "application/merge-patch+json", body: `{"name":"a"}`, status: 0},
		{name: "ok trailing space", contentType: "application/json", body: "{\"name\":\"a\"}\n\t ", status: 0},
		{name: "no content type", contentType: "", body: `{}`, status: 415, code: CodeUnsupportedMediaType},
		{name: "form", contentType: "application/x-www-form-urlencoded", body: `name=a`, status: 415, code: CodeUnsupportedMediaType},
		{name: "bad content type", contentType: ";;;", body: `{}`, status: 415, code: CodeUnsupportedMediaType},
		{name: "too large", contentType: "application/json", body: `{"name":"` + strings.Repeat("x", 100) + `"}`, max: 64, status: 413, code: CodeTooLarge},
		{name: "exactly max", contentType: "application/json", body: `{"name":"abcdefgh"}`, max: int64(len(`{"name":"abcdefgh"}`)), status: 0},
		{name: "unknown field", contentType: "application/json", body: `{"name":"a","colour":"red"}`, status: 400, code: CodeInvalid, field: "colour"},
		{name: "syntax", contentType: "application/json", body: `{"name":}`, status: 400, code: CodeInvalid},
		{name: "truncated", contentType: "application/json", body: `{"name":"a"`, status: 400, code: CodeInvalid},
		{name: "wrong type", contentType: "application/json", body: `{"count":"two"}`, status: 400, code: CodeInvalid, field: "count"},
		{name: "wrong pointer type", contentType: "application/json", body: `{"opt":3}`, status: 400, code: CodeInvalid, field: "opt"},
		{name: "array", contentType: "application/json", body: `[1,2]`, status: 400, code: CodeInvalid},
		{name: "empty", contentType: "application/json", body: ``, status: 400, code: CodeInvalid},
		{name: "blank", contentType: "application/json", body: "  \n", status: 400, code: CodeInvalid},
		{name: "null", contentType: "application/json", body: `null`, status: 400, code: CodeInvalid},
		{name: "trailing object", contentType: "application/json", body: `{"name":"a"}{"name":"b"}`, status: 400, code: CodeInvalid},
		{name: "trailing garbage", contentType: "application/json", body: `{"name":"a"} x`, status: 400, code: CodeInvalid},
		// RFC 8259 section 4: names SHOULD be unique; a receiver that keeps
		// one of two values silently loses the other.
		{name: "a name sent twice", contentType: "application/json", body: `{"name":"a","count":1,"name":"b"}`, status: 400, code: CodeInvalid, field: "name"},
		{name: "a name sent twice, once as null", contentType: "application/json", body: `{"name":"a","name":null}`, status: 400, code: CodeInvalid, field: "name"},
		{name: "a name sent twice in another case", contentType: "application/json", body: `{"name":"a","Name":"b"}`, status: 400, code: CodeInvalid, field: "name"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tc.body))
			if tc.contentType != "" {
				req.Header.Set("Content-Type", tc.contentType)
			}
			max := tc.max
			if max == 0 {
				max = 1 << 20
			}
			var dst payload
			err := DecodeJSON(req, max, &dst)
			if tc.status == 0 {
				if err != nil {
					t.Fatalf("DecodeJSON: %v", err)
				}
				if dst.Name == "" {
					t.Errorf("decoded nothing: %+v", dst)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not an *Error", err)
			}
			if e.Status != tc.status || e.Code != tc.code {
				t.Errorf("got %d %s (%s), want %d %s", e.Status, e.Code, e.Message, tc.status, tc.code)
			}
			if tc.field != "" && e.Fields[tc.field] == "" {
				t.Errorf("fields %v do not name %q", e.Fields, tc.field)
			}
			if strings.Contains(e.Message, "json:") || strings.Contains(e.Message, "main.payload") || strings.Contains(e.Message, "httpapi.") {
				t.Errorf("message leaks Go internals: %q", e.Message)
			}
		})
	}
}

func TestDecodeJSONEmbeddedFieldPath(t *testing.T) {
	t.Parallel()
	type inner struct {
		Scopes string `json:"scopes"`
		Nested struct {
			Count int `json:"count"`
		} `json:"nested"`
	}
	type outer struct {
		inner
		Extra *string `json:"extra"`
	}
	for body, field := range map[string]string{
		`{"scopes":["a"]}`:         "scopes",
		`{"nested":{"count":"x"}}`: "nested.count",
		`{"extra":1}`:              "extra",
	} {
		req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		var e *Error
		if err := DecodeJSON(req, 1024, &outer{}); !errors.As(err, &e) || e.Fields[field] == "" {
			t.Errorf("%s: error %v, want fields naming %q", body, err, field)
		}
	}
}

// TestDecodeJSONFieldsReportsEveryProblem: unknown fields and wrong types
// anywhere in the body are all named in one answer, and the fields that
// are fine are decoded, so the handler can add its own checks' problems.
func TestDecodeJSONFieldsReportsEveryProblem(t *testing.T) {
	t.Parallel()
	type inner struct {
		Count int      `json:"count"`
		Tags  []string `json:"tags"`
	}
	type payload struct {
		Name   string           `json:"name"`
		Age    uint8            `json:"age"`
		Flag   bool             `json:"flag"`
		Nested *inner           `json:"nested"`
		Labels map[string]int   `json:"labels"`
		Any    any              `json:"any"`
		Raw    json.RawMessage  `json:"raw"`
		List   []inner          `json:"list"`
		Keep   string           `json:"keep"`
		Extra  map[string]inner `json:"extra"`
	}
	body := `{"name":3,"age":300,"flag":"yes","colour":"red","nested":{"count":"x","tags":["a",2],"deep":1},
		"labels":{"a":1,"b":"two"},"any":[1,"x"],"raw":{"whatever":true},"list":[{"count":1},{"count":false}],
		"Keep":"kept","extra":{"k":{"count":2}}}`
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	var dst payload
	fields, err := DecodeJSONFields(req, 1<<20, &dst)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"name": "must be a string", "age": "must be an integer", "flag": "must be a boolean", "colour": "unknown field",
		"nested.count": "must be an integer", "nested.tags[1]": "must be a string", "nested.deep": "unknown field",
		"labels.b": "must be an integer", "list[1].count": "must be an integer",
	}
	for f, msg := range want {
		if fields[f] != msg {
			t.Errorf("field %s: %q, want %q", f, fields[f], msg)
		}
	}
	if len(fields) != len(want) {
		t.Errorf("fields %v, want exactly %v", fields, want)
	}
	if dst.Keep != "kept" || dst.Labels["a"] != 1 || string(dst.Raw) != `{"whatever":true}` || dst.Extra["k"].Count != 2 || dst.Any == nil {
		t.Errorf("the good fields were not decoded: %+v", dst)
	}
	// DecodeJSON answers them in one 400.
	req = httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	var e *Error
	if err := DecodeJSON(req, 1<<20, &payload{}); !errors.As(err, &e) || e.Status != 400 || len(e.Fields) != len(want) {
		t.Errorf("DecodeJSON: %v", err)
	}
}

func TestDecodeJSONDeclaredLengthTooLarge(t *testing.T) {
	t.Parallel()
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(`{}`))
	req.Header.Set("Content-Type", "application/json")
	req.ContentLength = 1 << 30
	var e *Error
	if err := DecodeJSON(req, 1024, &struct{}{}); !errors.As(err, &e) || e.Status != 413 {
		t.Errorf("DecodeJSON = %v, want 413", err)
	}
}

const (
	adminTok  = "admin-token-0123456789"
	admin2Tok = "second-admin-token-xyz"
	boTok     = "back-office-token-abcdef"
)

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		role, _ := RoleFromContext(r.Context())
		WriteJSON(w, 200, map[string]string{"role": role})
	})
}

func do(h http.Handler, authz string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/x", nil)
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestRequireRoles(t *testing.T) {
	t.Parallel()
	a, err := NewAuthorizer(slog.New(slog.DiscardHandler),
		Role{Name: RoleAdmin, Setting: "-admin-token", Tokens: []string{adminTok, admin2Tok}},
		Role{Name: "back-office", Setting: "-back-office-token", Tokens: []string{boTok}},
	)
	if err != nil {
		t.Fatal(err)
	}
	adminOnly := a.Require(RoleAdmin)(okHandler())
	either := a.Require(RoleAdmin, "back-office")(okHandler())

	tests := []struct {
		name    string
		h       http.Handler
		authz   string
		status  int
		role    string
		wwwAuth string
	}{
		{"admin token", adminOnly, "Bearer " + adminTok, 200, RoleAdmin, ""},
		{"second admin token", adminOnly, "Bearer " + admin2Tok, 200, RoleAdmin, ""},
		{"scheme case-insensitive", adminOnly, "bearer " + adminTok, 200, RoleAdmin, ""},
		{"missing", adminOnly, "", 401, "", `Bearer realm="p2pserver"`},
		{"basic scheme", adminOnly, "Basic " + adminTok, 401, "", `Bearer realm="p2pserver"`},
		{"empty bearer", adminOnly, "Bearer ", 401, "", `Bearer realm="p2pserver"`},
		{"wrong token", adminOnly, "Bearer " + adminTok + "x", 401, "", `Bearer realm="p2pserver", error="invalid_token"`},
		{"prefix of token", adminOnly, "Bearer " + adminTok[:len(adminTok)-1], 401, "", `Bearer realm="p2pserver", error="invalid_token"`},
		{"other role", adminOnly, "Bearer " + boTok, 403, "", ""},
		{"either: back office", either, "Bearer " + boTok, 200, "back-office", ""},
		{"either: admin", either, "Bearer " + adminTok, 200, RoleAdmin, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := do(tc.h, tc.authz)
			if rec.Code != tc.status {
				t.Fatalf("status = %d, want %d; body %s", rec.Code, tc.status, rec.Body)
			}
			if got := rec.Header().Get("WWW-Authenticate"); got != tc.wwwAuth {
				t.Errorf("WWW-Authenticate = %q, want %q", got, tc.wwwAuth)
			}
			if tc.status == 200 {
				var body map[string]string
				_ = json.NewDecoder(rec.Body).Decode(&body)
				if body["role"] != tc.role {
					t.Errorf("role = %q, want %q", body["role"], tc.role)
				}
				return
			}
			if strings.Contains(rec.Body.String(), adminTok) {
				t.Error("response echoes a token")
			}
			errorResponse(t, rec)
		})
	}
}

func TestRequireWithoutTokensRefusesAndLogsOnce(t *testing.T) {
	t.Parallel()
	var logged bytes.Buffer
	mw, err := Admin(slog.New(slog.NewTextHandler(&logged, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	h := mw(okHandler())
	for _, authz := range []string{"", "Bearer " + adminTok, "Bearer whatever-anything-goes"} {
		rec := do(h, authz)
		if rec.Code != 403 {
			t.Fatalf("%q: status = %d, want 403", authz, rec.Code)
		}
		if e := errorResponse(t, rec); e.Code != CodeForbidden {
			t.Errorf("code = %s", e.Code)
		}
	}
	if n := strings.Count(logged.String(), "P2P_ADMIN_TOKEN"); n != 1 {
		t.Errorf("log names P2P_ADMIN_TOKEN %d times, want once; log:\n%s", n, logged.String())
	}
	if !strings.Contains(logged.String(), "-admin-token") {
		t.Errorf("log does not say how to set the token: %s", logged.String())
	}
}

func TestNewAuthorizerRefusesBadConfig(t *testing.T) {
	t.Parallel()
	cases := map[string][]Role{
		"short token":      {{Name: "admin", Tokens: []string{"short"}}},
		"duplicate role":   {{Name: "admin"}, {Name: "admin"}},
		"unnamed role":     {{Tokens: []string{adminTok}}},
		"token in 2 roles": {{Name: "admin", Tokens: []string{adminTok}}, {Name: "bo", Tokens: []string{adminTok}}},
	}
	for name, roles := range cases {
		if _, err := NewAuthorizer(nil, roles...); err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), adminTok) || strings.Contains(err.Error(), "short\"") {
			t.Errorf("%s: error repeats the token: %v", name, err)
		}
	}
	if _, err := NewAuthorizer(nil, Role{Name: "admin", Tokens: []string{adminTok, adminTok}}); err != nil {
		t.Errorf("same token twice in one role: %v", err)
	}
	a, _ := NewAuthorizer(nil, Role{Name: "admin"})
	defer func() {
		if recover() == nil {
			t.Error("Require of an unknown role did not panic")
		}
	}()
	a.Require("nobody")
}

func TestSplitTokens(t *testing.T) {
	t.Parallel()
	got := SplitTokens(" a , b,,c ,")
	if strings.Join(got, "|") != "a|b|c" {
		t.Errorf("SplitTokens = %q", got)
	}
	if SplitTokens("") != nil {
		t.Error("SplitTokens(\"\") is not empty")
	}
}

func TestRouterJSONFallbacks(t *testing.T) {
	t.Parallel()
	r := NewRouter(slog.New(slog.DiscardHandler))
	r.Get("/things", func(w http.ResponseWriter, r *http.Request) { WriteJSON(w, 200, "ok") })
	r.Get("/boom", func(w http.ResponseWriter, r *http.Request) { panic("kaboom secret detail") })
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)

	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/nope", 404, CodeNotFound},
		{"DELETE", "/things", 405, CodeMethodNotAllowed},
		{"GET", "/boom", 500, CodeInternal},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		rec.Code = resp.StatusCode
		for k, v := range resp.Header {
			rec.Header()[k] = v
		}
		_, _ = rec.Body.ReadFrom(resp.Body)
		resp.Body.Close()
		if rec.Code != tc.status {
			t.Errorf("%s %s: status %d, want %d", tc.method, tc.path, rec.Code, tc.status)
			continue
		}
		if strings.Contains(rec.Body.String(), "kaboom") {
			t.Errorf("panic value leaked: %s", rec.Body)
		}
		if e := errorResponse(t, rec); e.Code != tc.code {
			t.Errorf("%s %s: code %s, want %s", tc.method, tc.path, e.Code, tc.code)
		}
	}
}

func TestWriteErrorKindedErrors(t *testing.T) {
	var logged bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logged, nil)))
	t.Cleanup(func() { slog.SetDefault(prev) })

	rec := httptest.NewRecorder()
	WriteError(rec, errs.E("oidcservers.create", errs.Conflict, "issuer already registered",
		errs.Issue{Path: "issuer", Message: "already registered"}, errors.New("bolt: detail")))
	if rec.Code != http.StatusConflict {
		t.Errorf("status = %d, want 409", rec.Code)
	}
	raw := rec.Body.String()
	e := errorResponse(t, rec)
	if e.Code != "conflict" || e.Message != "issuer already registered" || e.Fields["issuer"] != "already registered" {
		t.Errorf("error = %+v", e)
	}
	if strings.Contains(raw, "bolt") || strings.Contains(raw, "oidcservers.create") {
		t.Errorf("cause or op leaked: %s", raw)
	}

	rec = httptest.NewRecorder()
	WriteError(rec, errs.E("store.put", errors.New("disk on fire")))
	if rec.Code != 500 || strings.Contains(rec.Body.String(), "disk") {
		t.Errorf("internal kinded error: %d %s", rec.Code, rec.Body)
	}
	if !strings.Contains(logged.String(), "disk on fire") {
		t.Errorf("internal kinded error not logged: %s", logged.String())
	}
}

func TestCodesAreKindNames(t *testing.T) {
	t.Parallel()
	for code, kind := range map[string]errs.Kind{
		CodeInvalid: errs.Invalid, CodeUnauthorized: errs.Unauthorized, CodeForbidden: errs.Permission,
		CodeNotFound: errs.NotFound, CodeMethodNotAllowed: errs.MethodNotAllowed, CodeConflict: errs.Conflict,
		CodeTooLarge: errs.TooLarge, CodeUnsupportedMediaType: errs.UnsupportedMedia, CodeInternal: errs.Internal,
	} {
		if code != kind.String() {
			t.Errorf("code %q != kind name %q", code, kind.String())
		}
		if code != CodeInternal && StatusOf(kind) == 500 {
			t.Errorf("kind %s maps to 500", kind)
		}
	}
}

// TestErrorFieldsAreBounded: a body with thousands of problems gets one
// answer of bounded size, over real HTTP: the first MaxFields problems by
// name, and a message saying how many there are. Names sent twice are
// found in nested objects too.
func TestErrorFieldsAreBounded(t *testing.T) {
	t.Parallel()
	type inner struct {
		Count int `json:"count"`
	}
	type payload struct {
		Name   string `json:"name"`
		Nested inner  `json:"nested"`
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := DecodeJSON(r, 1<<20, &payload{}); err != nil {
			WriteError(w, err)
			return
		}
		WriteJSON(w, http.StatusOK, map[string]string{"ok": "yes"})
	}))
	t.Cleanup(srv.Close)
	many := func(n int, format string) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = fmt.Sprintf(format, i)
		}
		return strings.Join(parts, ",")
	}
	for _, c := range []struct {
		name   string
		body   string
		fields int
		says   string
	}{
		{"5000 unknown fields", `{"name":"a",` + many(5000, `"f%05d":0`) + `}`, MaxFields, "5000 problems"},
		{"150 names sent twice", `{` + many(150, `"n%03d":0`) + `,` + many(150, `"n%03d":1`) + `}`, MaxFields, "problems; the first 100"},
		{"a name sent twice in a nested object", `{"nested":{"count":1,"count":2}}`, 1, ""},
		{"40 unknown fields: all listed", `{` + many(40, `"u%02d":0`) + `}`, 40, "invalid fields"},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, err := http.Post(srv.URL, "application/json", strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct {
				Error errorJSON `json:"error"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusBadRequest || len(body.Error.Fields) != c.fields || !strings.Contains(body.Error.Message, c.says) {
				t.Errorf("%d, %d fields, message %q; want 400, %d fields, saying %q", resp.StatusCode, len(body.Error.Fields), body.Error.Message, c.fields, c.says)
			}
			if c.fields == 1 && body.Error.Fields["nested.count"] == "" {
				t.Errorf("fields %v do not name nested.count", body.Error.Fields)
			}
		})
	}
}
