module github.com/p2pserver/p2pserver

go 1.26.8

require (
	github.com/coreos/go-oidc/v3 v3.16.0 // indirect
	github.com/emersion/go-sasl v0.0.0-20241020182733-b788ff22d5a6 // indirect
	github.com/emersion/go-smtp v0.24.0 // indirect
	github.com/go-chi/chi/v5 v5.2.3 // indirect
	github.com/go-jose/go-jose/v4 v4.1.3 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/samply/golang-fhir-models/fhir-models v0.3.2 // indirect
	github.com/swaggest/swgui v1.8.4 // indirect
	github.com/wneessen/go-mail v0.7.2 // indirect
	github.com/zitadel/oidc/v3 v3.45.0 // indirect
	go.etcd.io/bbolt v1.4.3 // indirect
	golang.org/x/oauth2 v0.32.0 // indirect
	golang.org/x/sys v0.31.0 // indirect
	golang.org/x/text v0.30.0 // indirect
)
