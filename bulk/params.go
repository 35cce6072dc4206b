package bulk

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/p2pserver/p2pserver/fhir/authz"
	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/internal/errs"
)

// The _outputFormat values meaning NDJSON (Bulk Data STU 2 lets servers
// take the two abbreviations).
var ndjsonFormats = []string{NDJSON, "application/ndjson", "ndjson"}

// kickoffParams are the parameters each kick-off takes; any other is
// refused rather than ignored.
var kickoffParams = map[string][]string{
	"system":  {"_outputFormat", "_since", "_until", "_type", "_typeFilter"},
	"patient": {"_outputFormat", "_since", "_until", "_type", "_typeFilter", "patient"},
	"group":   {"_outputFormat", "_since", "_until", "_type", "_typeFilter", "patient"},
	// ATR davinci-data-export.
	"davinci": {"_outputFormat", "_since", "_until", "_type", "_typeFilter", "exportType", "patient"},
}

// The search parameters a _typeFilter query may not carry: they shape
// results, not which resources match.
var resultParams = []string{"_count", "_sort", "_include", "_revinclude", "_summary", "_elements",
	"_total", "_contained", "_containedType", "_format", "_pretty", "_maxresults"}

// parseSpec reads the kick-off parameters (Bulk Data Access STU 2
// "Query Parameters"; ATR davinci-data-export) into what the job does.
// Errors are Invalid (400) naming the parameter, Permission (403) for a
// type the token cannot read, NotFound (404) for an unknown Group.
func (e *Exporter) parseSpec(ctx context.Context, level, groupID string, params url.Values, p *authz.Principal) (*ExportSpec, error) {
	const op = "bulk.kickoff"
	bad := func(format string, args ...any) error {
		return errs.E(op, errs.Invalid, fmt.Sprintf(format, args...))
	}
	for name := range params {
		if !slices.Contains(kickoffParams[level], name) {
			if name == "_format" || name == "_pretty" {
				continue
			}
			return nil, bad("parameter %s is not supported by this operation (it takes %s)", name, strings.Join(kickoffParams[level], ", "))
		}
	}
	spec := &ExportSpec{Level: level, GroupID: groupID}
	if p != nil {
		spec.Restricted = true
		for _, t := range e.st.Registry().Model().ResourceTypes() {
			if p.CanRead(t) {
				spec.Readable = append(spec.Readable, t)
			}
		}
	}
	if level == "davinci" {
		spec.Level = "group"
		switch et := params.Get("exportType"); et {
		case PayerToPayer:
			spec.PayerToPayer = true
		case "":
			return nil, bad("exportType is required: this server answers $davinci-data-export for payer-to-payer exchange (exportType=%s)", PayerToPayer)
		default:
			return nil, bad("exportType %q is not supported: this server answers %s", et, PayerToPayer)
		}
	}
	if f := params.Get("_outputFormat"); f != "" && !slices.Contains(ndjsonFormats, f) {
		return nil, bad("_outputFormat %q is not supported: this server writes %s", f, NDJSON)
	}
	if len(params["patient"]) > 0 {
		return nil, bad("the patient parameter is not supported: export a Group of those members instead")
	}
	now := e.now()
	var err error
	if spec.Since, err = instant(params, "_since", now); err != nil {
		return nil, err
	}
	if spec.Until, err = instant(params, "_until", now); err != nil {
		return nil, err
	}
	if !spec.Since.IsZero() && !spec.Until.IsZero() && !spec.Since.Before(spec.Until) {
		return nil, bad("_since must be before _until")
	}
	if spec.PayerToPayer {
		// PDex STU 2.1 (_since): five years before the request at most.
		spec.ServiceFloor = now.AddDate(-5, 0, 0)
		if spec.Since.Before(spec.ServiceFloor) {
			spec.Since = spec.ServiceFloor
		}
	}

	// The types: asked (_type), or all the token can read; for a
	// patient or group export, those of the Patient compartment.
	reg := e.st.Registry()
	candidates := func() []string {
		if spec.PayerToPayer {
			return P2PTypes
		}
		var all []string
		for _, t := range reg.Model().ResourceTypes() {
			// A Group names other members: it is not part of a member's
			// data, though the Patient compartment lists it.
			if spec.Level == "system" || (reg.InPatientCompartment(t) && t != "Group") {
				all = append(all, t)
			}
		}
		return all
	}()
	if raw := params["_type"]; len(raw) > 0 {
		for _, v := range raw {
			for _, t := range strings.Split(v, ",") {
				t = strings.TrimSpace(t)
				switch {
				case t == "":
					continue
				case !reg.Model().IsResource(t):
					return nil, bad("_type: %q is not a resource type", t)
				case !slices.Contains(candidates, t):
					if spec.PayerToPayer {
						return nil, bad("_type: %s is not part of the payer-to-payer data set (%s)", t, strings.Join(P2PTypes, ", "))
					}
					return nil, bad("_type: %s resources are not in the Patient compartment, so a %s-level export has none", t, spec.Level)
				}
				if err := checkReadable(p, t); err != nil {
					return nil, err
				}
				if !slices.Contains(spec.Types, t) {
					spec.Types = append(spec.Types, t)
				}
			}
		}
	} else {
		for _, t := range candidates {
			if p.CanRead(t) && !skipByDefault[t] {
				spec.Types = append(spec.Types, t)
			}
		}
	}
	if len(spec.Types) == 0 {
		return nil, errs.E(op, errs.Permission, "the token's scopes allow reading none of the types this export covers")
	}
	if spec.PayerToPayer && !slices.Contains(spec.Types, "Provenance") && p.CanRead("Provenance") {
		// The Provenance of what is sent goes with it.
		spec.Types = append(spec.Types, "Provenance")
	}
	// Provenance comes last: for a patient or group export it is the
	// Provenance of what the other files hold.
	if i := slices.Index(spec.Types, "Provenance"); i >= 0 && spec.Level != "system" {
		spec.Types = append(slices.Delete(spec.Types, i, i+1), "Provenance")
	}

	for _, raw := range params["_typeFilter"] {
		if err := addTypeFilter(reg, spec, raw); err != nil {
			return nil, err
		}
	}

	if spec.Level == "group" {
		err := e.st.View(ctx, func(tx *store.Tx) error {
			v, err := tx.Read("Group", groupID)
			if err != nil || !e.srv.Policy().CanSee(tx, p, v) {
				return errs.E(op, errs.NotFound, fmt.Sprintf("Group/%s is not known", groupID))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return spec, nil
}

// skipByDefault are types an export without _type leaves out: they are
// this server's own bookkeeping or not data about members.
var skipByDefault = map[string]bool{
	"Subscription": true, "AuditEvent": true, "Binary": true, "Bundle": true, "OperationOutcome": true,
	"Parameters": true,
}

// addTypeFilter adds one _typeFilter value ("Type?query") after checking
// that this server can apply it: a known type among those exported, and
// search parameters the type supports (Bulk Data STU 2: a server that
// cannot apply a filter fails the kick-off rather than ignore it; PDex
// STU 2.1 says the same).
func addTypeFilter(reg *search.Registry, spec *ExportSpec, raw string) error {
	const op = "bulk.kickoff"
	bad := func(format string, args ...any) error {
		return errs.E(op, errs.Invalid, "_typeFilter "+fmt.Sprintf("%q: ", raw)+fmt.Sprintf(format, args...),
			errs.Issue{Code: "not-supported", Path: "_typeFilter", Message: fmt.Sprintf(format, args...)})
	}
	typ, query, ok := strings.Cut(raw, "?")
	if !ok || typ == "" || query == "" {
		return bad("it must be a resource type, ?, and a search query")
	}
	if !slices.Contains(spec.Types, typ) {
		return bad("%s is not among the types exported", typ)
	}
	vals, err := url.ParseQuery(query)
	if err != nil {
		return bad("the query is not valid URL encoding")
	}
	for name := range vals {
		if slices.Contains(resultParams, strings.SplitN(name, ":", 2)[0]) {
			return bad("%s shapes search results and cannot filter an export", name)
		}
	}
	if _, err := reg.Parse(typ, vals, search.Options{}); err != nil {
		msg, _ := errs.Public(err)
		return bad("this server cannot apply it: %s", msg)
	}
	if spec.TypeFilters == nil {
		spec.TypeFilters = map[string][]string{}
	}
	spec.TypeFilters[typ] = append(spec.TypeFilters[typ], query)
	return nil
}

// instant parses an instant parameter (_since, _until): a full date and
// time with a zone, not in the future.
func instant(params url.Values, name string, now time.Time) (time.Time, error) {
	v := params.Get(name)
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, errs.E("bulk.kickoff", errs.Invalid, fmt.Sprintf("%s must be a FHIR instant (e.g. 2024-01-02T03:04:05Z), not %q", name, v))
	}
	if t.After(now.Add(time.Minute)) {
		return time.Time{}, errs.E("bulk.kickoff", errs.Invalid, fmt.Sprintf("%s is in the future", name))
	}
	return t.UTC(), nil
}
