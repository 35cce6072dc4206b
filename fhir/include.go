package fhir

import (
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"github.com/p2pserver/p2pserver/fhir/search"
	"github.com/p2pserver/p2pserver/fhir/store"
)

// included gathers a page's _include and _revinclude resources (FHIR R4
// search.html#include): those of the matches ids (of type typ), then, for
// the :iterate ones, those of the resources included so far, round after
// round until a round adds nothing new. Only what the request may see is
// included or followed further (sees decides). It stops at s.cfg.MaxIncluded resources
// and then reports true.
func (s *Server) included(tx *store.Tx, typ string, ids []string, q *search.Query, sees func(*store.Version) bool) ([]*store.Version, bool, error) {
	if len(q.Include) == 0 && len(q.RevInclude) == 0 {
		return nil, false, nil
	}
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		seen[typ+"/"+id] = true
	}
	var out []*store.Version
	full := false
	frontier := map[string][]string{typ: ids}
	for round := 0; len(frontier) > 0 && !full; round++ {
		next := map[string][]string{}
		add := func(vs []*store.Version) {
			// In one order whatever the order of a resource's index
			// entries: answers must not vary from server to server.
			slices.SortStableFunc(vs, func(a, b *store.Version) int {
				return strings.Compare(a.Type+"/"+a.ID, b.Type+"/"+b.ID)
			})
			for _, v := range vs {
				k := v.Type + "/" + v.ID
				if seen[k] || full {
					continue
				}
				seen[k] = true
				if !sees(v) {
					continue // never include, nor follow, what the request may not see
				}
				if len(out) >= s.cfg.MaxIncluded {
					full = true
					return
				}
				out = append(out, v)
				next[v.Type] = append(next[v.Type], v.ID)
			}
		}
		types := make([]string, 0, len(frontier))
		for t := range frontier {
			types = append(types, t)
		}
		slices.Sort(types)
		for _, t := range types {
			if incs := includesFor(q.Include, round, t, false); len(incs) > 0 {
				vs, err := tx.Included(t, frontier[t], incs)
				if err != nil {
					return nil, false, err
				}
				cs, err := s.canonicalIncluded(tx, t, frontier[t], incs)
				if err != nil {
					return nil, false, err
				}
				add(append(vs, cs...))
			}
			if revs := includesFor(q.RevInclude, round, t, true); len(revs) > 0 {
				vs, err := tx.RevIncluded(t, frontier[t], revs)
				if err != nil {
					return nil, false, err
				}
				cs, err := s.canonicalRevIncluded(tx, t, frontier[t], revs)
				if err != nil {
					return nil, false, err
				}
				add(append(vs, cs...))
			}
		}
		frontier = next
	}
	return out, full, nil
}

// includesFor picks the includes that apply in round (0: to the matches)
// to resources of type t: every one in round 0 (an _include names the
// searched type), the :iterate ones after. _revinclude names the type that
// refers, not t, so only its target type is checked (by RevIncluded).
func includesFor(incs []search.Include, round int, t string, rev bool) []search.Include {
	var out []search.Include
	for _, inc := range incs {
		if round > 0 && !inc.Iterate {
			continue
		}
		if !rev && inc.Type != t && inc.Type != "*" {
			continue
		}
		out = append(out, inc)
	}
	return out
}

// includeLimitOutcome is the outcome entry of a page whose includes were
// cut at the limit.
func includeLimitOutcome(limit int) *OperationOutcome {
	return &OperationOutcome{ResourceType: "OperationOutcome", Issue: []OOIssue{{
		Severity: "warning", Code: "incomplete",
		Diagnostics: fmt.Sprintf("_include/_revinclude stopped at %d included resources on this page (the server's limit); "+
			"resources they name beyond it are left out: ask for smaller pages (_count) or fewer includes", limit),
	}}}
}

// canonicalIncluded returns the resources that the canonical references
// (url or url|version, R4 references.html#canonical) of typ/ids name
// through incs: a reference parameter on a canonical element, such as
// QuestionnaireResponse:questionnaire, includes the resources of its
// target types whose url (and version, when the reference names one) it
// is, found as [type]?url=...&version=... would find them (FHIR R4
// search.html#include: the parameter is followed whatever the reference's
// form). Literal references are left to tx.Included.
func (s *Server) canonicalIncluded(tx *store.Tx, typ string, ids []string, incs []search.Include) ([]*store.Version, error) {
	var out []*store.Version
	done := map[string]bool{}
	for _, id := range ids {
		for _, e := range tx.EntriesOf(typ, id) {
			ref, ok := search.ReferenceFromKey(e.Key)
			if !ok {
				continue
			}
			if len(e.Payload) > 0 {
				ref = string(e.Payload) // a value longer than a key
			}
			if !isCanonical(ref) {
				continue
			}
			p, ok := s.reg.Lookup(typ, e.Param)
			if !ok {
				continue
			}
			for _, inc := range incs {
				if inc.Param != "*" && inc.Param != e.Param {
					continue
				}
				for _, target := range s.reg.TargetTypes(p) {
					if inc.TargetType != "" && inc.TargetType != target {
						continue
					}
					if done[target+" "+ref] {
						continue
					}
					done[target+" "+ref] = true
					vs, err := s.byCanonical(tx, target, ref)
					if err != nil {
						return nil, err
					}
					out = append(out, vs...)
				}
			}
		}
	}
	return out, nil
}

// canonicalRevIncluded returns the resources that refer to typ/ids (of a
// type with a url) by canonical reference through incs: those whose
// parameter holds the resource's url, or its url|version.
func (s *Server) canonicalRevIncluded(tx *store.Tx, typ string, ids []string, incs []search.Include) ([]*store.Version, error) {
	if _, ok := s.reg.Lookup(typ, "url"); !ok {
		return nil, nil
	}
	matches, err := tx.ReadCurrent(typ, ids)
	if err != nil {
		return nil, err
	}
	var out []*store.Version
	for _, m := range matches {
		var c struct {
			URL     string `json:"url"`
			Version string `json:"version"`
		}
		if json.Unmarshal(m.JSON, &c) != nil || c.URL == "" {
			continue
		}
		values := []string{c.URL}
		if c.Version != "" {
			values = append(values, c.URL+"|"+c.Version)
		}
		for _, inc := range incs {
			if inc.TargetType != "" && inc.TargetType != typ {
				continue
			}
			params := []string{inc.Param}
			if inc.Param == "*" {
				params = params[:0]
				for _, p := range s.reg.ReferenceParams(inc.Type, typ) {
					params = append(params, p.Code)
				}
			}
			for _, param := range params {
				for _, v := range values {
					q, err := s.reg.Parse(inc.Type, url.Values{param: {escapeSearchValue(v)}}, search.Options{Base: s.cfg.BaseURL})
					if err != nil {
						continue // a value the parameter cannot hold refers to nothing
					}
					found, err := tx.Search(q)
					if err != nil {
						return nil, err
					}
					vs, err := tx.ReadCurrent(inc.Type, found)
					if err != nil {
						return nil, err
					}
					out = append(out, vs...)
				}
			}
		}
	}
	return out, nil
}

// byCanonical returns the resources of target whose url is the canonical
// ref's, and whose version is ref's when it names one.
func (s *Server) byCanonical(tx *store.Tx, target, ref string) ([]*store.Version, error) {
	if _, ok := s.reg.Lookup(target, "url"); !ok {
		return nil, nil
	}
	ref, _, _ = strings.Cut(ref, "#")
	canon, version, _ := strings.Cut(ref, "|")
	values := url.Values{"url": {escapeSearchValue(canon)}}
	if version != "" {
		if _, ok := s.reg.Lookup(target, "version"); !ok {
			return nil, nil
		}
		values.Set("version", escapeSearchValue(version))
	}
	q, err := s.reg.Parse(target, values, search.Options{Base: s.cfg.BaseURL})
	if err != nil {
		return nil, nil // a value the parameters cannot hold names nothing
	}
	found, err := tx.Search(q)
	if err != nil {
		return nil, err
	}
	return tx.ReadCurrent(target, found)
}

// isCanonical reports whether a reference's value is an absolute URL or
// URN (the form of a canonical), not a Type/id.
func isCanonical(ref string) bool {
	return strings.Contains(ref, "://") || strings.HasPrefix(ref, "urn:")
}

// escapeSearchValue escapes the characters search parameter values give a
// meaning to (search.html#escaping), so that v is searched as it is.
func escapeSearchValue(v string) string {
	return strings.NewReplacer(`\`, `\\`, `,`, `\,`, `$`, `\$`, `|`, `\|`).Replace(v)
}
