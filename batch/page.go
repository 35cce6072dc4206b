package batch

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/go-json-experiment/json/jsontext"

	"github.com/p2pserver/p2pserver/fhir/spec"
	"github.com/p2pserver/p2pserver/fhir/store"
)

// pageError is a problem with a page's content: the job fails with Reason.
type pageError struct{ Reason string }

func (e *pageError) Error() string { return e.Reason }

func pageErrorf(format string, args ...any) error {
	return &pageError{Reason: fmt.Sprintf(format, args...)}
}

// neverIngested are resource types a page may carry that are not member
// data and must not be stored: a Subscription would make this server call
// out to wherever the source says, an OperationOutcome is a message about
// the response.
var neverIngested = map[string]bool{"Subscription": true, "OperationOutcome": true}

// pageResource is one resource of a page, from the source's JSON to the
// document written here.
type pageResource struct {
	index   int    // entry index in the Bundle, for messages
	typ     string // resource type
	srcID   string // the source's id, or the fullUrl when it has none
	localID string
	source  string // meta.source: where the resource lives at the source
	raw     []byte
	m       map[string]any
	refMaps []map[string]any // the References in m
	refs    []string         // source-relative targets it references, as local refs
	doc     *store.Doc
	digest  [sha256.Size]byte
	// unchanged: the resource is stored here as the page has it; version
	// is the current local version it was found at.
	unchanged bool
	version   int64
	ref       string // localRef, made by setLocalID
}

// setLocalID sets the resource's local id (and its localRef).
func (p *pageResource) setLocalID(id string) { p.localID, p.ref = id, p.typ+"/"+id }

// localRef is the resource's local reference, Type/localID.
func (p *pageResource) localRef() string {
	if p.ref == "" {
		return p.typ + "/" + p.localID
	}
	return p.ref
}

// pendingRef records that referrer names target, which is not here yet.
// The referrer holds either the absolute source URL abs (until target
// arrives) or, when local, target's local reference (until the job ends,
// when it is set to abs if target never came).
type pendingRef struct {
	target, referrer, abs string
	local                 bool
}

// preparedPage is a page ready to be written in one transaction.
type preparedPage struct {
	url       string
	next      string // absolute next link, "" on the last page
	resources []*pageResource
	skipped   map[string]int
	pending   []pendingRef
	member    *pageResource // the member's Patient at the source, if on the page
	single    string        // the type of the body when one resource, not a Bundle
	// nextRead is set when next leads back to a page the job has read:
	// that page's number, or -1 for this page itself.
	nextRead int
	// stamped is the lastUpdated the page's resources were prepared with
	// (one for the page, see finish); zero before.
	stamped time.Time

	fetched, prepared time.Duration // for the log
}

// validID reports whether s is a FHIR id: 1-64 of A-Z a-z 0-9 - . (a
// hand-written check: it runs for every reference of every resource).
func validID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// localID is the id a source resource is stored under, made from its
// source identity alone, so that every job that brings it again finds it:
// the source's id after a prefix naming the source and type (sourcePrefix
// and a dot), when that fits in a FHIR id (an id of up to
// maxPrefixedSource characters); else a digest of the identity
// (digestID). Prefixed ids keep the source's order: a source's ids that
// grow (sequences, time-ordered UUIDs) are stored one after the other, at
// the end of every bucket and index run keyed by id, where digests would
// fall at random places of them all (about ten database pages written
// per resource instead of one or two, see the store's
// BenchmarkIngestChunks).
//
// Resources ingested before prefixed ids keep their digest id: earlierID
// names it, and lookup finds them under it.
func localID(base, typ, srcID string) string {
	if digestIDsOnly || len(srcID) > maxPrefixedSource || !validID(srcID) {
		return digestID(base, typ, srcID)
	}
	return sourcePrefix(base, typ) + "." + srcID
}

// digestIDsOnly makes localID give digest ids only, as ingestion did
// before prefixed ids: set by tests of what was ingested then, never
// while a job runs.
var digestIDsOnly bool

// maxPrefixedSource is the longest source id stored under its prefixed
// form: the prefix (16 characters) and the dot leave 47 of a FHIR id's 64.
const maxPrefixedSource = 64 - 16 - 1

// sourcePrefix names a source's FHIR base and a resource type in the
// local ids of what is ingested from it: 16 hexadecimal digits of a
// digest of both (64 bits, so that no source can choose a base whose
// resources would take another's ids; a resource there from elsewhere is
// never written over either, see foreign).
func sourcePrefix(base, typ string) string {
	key := prefixKey{base, typ}
	if p, ok := prefixes.Load(key); ok {
		return p.(string)
	}
	sum := sha256.Sum256([]byte(base + "\x00" + typ))
	p := hex.EncodeToString(sum[:8])
	prefixes.Store(key, p)
	return p
}

// prefixes holds the sourcePrefix of each source base and type met: a
// resource's local id and those of its references each need one. There
// are as many as the sources' bases times the types ingested from them.
var prefixes sync.Map // prefixKey -> string

type prefixKey struct{ base, typ string }

// digestID is the local id of a source resource whose id does not fit the
// prefixed form (or that has none: a fullUrl), and the id every resource
// was ingested under before prefixed ids: a digest of its source
// identity.
func digestID(base, typ, srcID string) string {
	sum := sha256.Sum256([]byte(base + "\x00" + typ + "\x00" + srcID))
	return hex.EncodeToString(sum[:16])
}

// earlierID returns the digest id a resource whose local id is id (of
// typ, from base) was ingested under before prefixed ids, and whether it
// has one (a digest id is its own).
func earlierID(base, typ, id string) (string, bool) {
	src, ok := strings.CutPrefix(id, sourcePrefix(base, typ)+".")
	if !ok {
		return "", false
	}
	return digestID(base, typ, src), true
}

// preparer turns pages of one job into preparedPages.
type preparer struct {
	model     *spec.Model
	base      string // the source's FHIR base, normalized
	memberSrc string // the member's Patient id at the source
	workers   int
	// expect: the request promises the resources its resources refer to
	// (Patient/$everything), so references to resources not here yet are
	// written local at once; otherwise they point at the source until the
	// resource arrives.
	expect bool
}

// parse decodes and validates a page body fetched from pageURL: a
// searchset or collection Bundle, or (for the member read) one resource.
// It fills in identities and the page's own references; nothing is looked
// up in the store yet.
func (pp *preparer) parse(body []byte, pageURL string) (*preparedPage, error) {
	b, err := readEnvelope(body)
	if err != nil {
		var se *jsontext.SyntacticError
		if errors.As(err, &se) {
			return nil, pageErrorf("the source payer sent a page that is not valid JSON (syntax error at byte %d) from %s", se.ByteOffset, pageURL)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, pageErrorf("the source payer sent a page that is not valid JSON (it ends at byte %d, within a value) from %s", len(body), pageURL)
		}
		return nil, pageErrorf("the source payer sent a page that is not a FHIR Bundle from %s: %s", pageURL, clip(err.Error(), 200))
	}
	pg := &preparedPage{url: pageURL, skipped: map[string]int{}}
	type entry struct {
		fullURL string
		raw     []byte
	}
	var entries []entry
	switch {
	case b.resourceType == "Bundle":
		if b.typ != "searchset" && b.typ != "collection" {
			return nil, pageErrorf("the source payer sent a %q Bundle from %s; a page must be a searchset or collection Bundle", clip(b.typ, 40), pageURL)
		}
		for i, e := range b.entries {
			if e.mode == "outcome" {
				pg.skipped["OperationOutcome"]++
				continue
			}
			if len(e.resource) == 0 || string(e.resource) == "null" {
				return nil, pageErrorf("entry %d of the Bundle from %s has no resource", i, pageURL)
			}
			entries = append(entries, entry{e.fullURL, e.resource})
		}
		for _, l := range b.links {
			if l.relation == "next" && l.url != "" {
				pg.next = l.url
			}
		}
	case b.resourceType == "OperationOutcome":
		return nil, pageErrorf("the source payer answered %s with an OperationOutcome instead of data: %s", pageURL, outcomeText(b.issues))
	case b.resourceType == "":
		return nil, pageErrorf("the source payer sent JSON without a resourceType from %s; a page must be a FHIR Bundle", pageURL)
	case !pp.model.IsResource(b.resourceType):
		return nil, pageErrorf("the source payer sent a %q from %s, which is not a FHIR R4 resource", clip(b.resourceType, 64), pageURL)
	default:
		// A single resource: the read of the member's Patient.
		pg.single = b.resourceType
		entries = append(entries, entry{pageURL, body})
	}

	res := make([]*pageResource, len(entries))
	errsAt := make([]error, len(entries))
	pp.parallel(len(entries), func(i int) {
		res[i], errsAt[i] = pp.decode(i, entries[i].fullURL, entries[i].raw)
	})
	var problems []string
	for _, err := range errsAt {
		if err != nil {
			problems = append(problems, err.Error())
		}
	}
	if len(problems) > 0 {
		more := ""
		if len(problems) > 3 {
			more = fmt.Sprintf(" (and %d more)", len(problems)-3)
			problems = problems[:3]
		}
		return nil, pageErrorf("the page from %s has invalid resources: %s%s", pageURL, strings.Join(problems, "; "), more)
	}
	pp.collect(pg, res)
	return pg, nil
}

// collect adds the decoded resources res to pg: those never ingested are
// counted as skipped, a resource that comes twice is kept once (the later
// copy), and the member's Patient is noted.
func (pp *preparer) collect(pg *preparedPage, res []*pageResource) {
	seen := map[string]int{}
	for _, r := range res {
		if r == nil {
			continue
		}
		if neverIngested[r.typ] {
			pg.skipped[r.typ]++
			continue
		}
		if j, dup := seen[r.localRef()]; dup {
			// The same resource twice on a page (an _include of a match):
			// the later copy wins, once.
			pg.resources[j] = r
			continue
		}
		seen[r.localRef()] = len(pg.resources)
		pg.resources = append(pg.resources, r)
		if r.typ == "Patient" && pp.memberSrc != "" && r.srcID == pp.memberSrc {
			pg.member = r
		}
	}
	if pg.member != nil {
		pg.member = pg.resources[seen[pg.member.localRef()]]
	}
}

// decode parses and validates one resource and works out its identity.
func (pp *preparer) decode(i int, fullURL string, raw []byte) (*pageResource, error) {
	var refMaps []map[string]any
	v, err := decodeJSON(raw, &refMaps)
	m, _ := v.(map[string]any)
	if err != nil || m == nil {
		return nil, fmt.Errorf("entry %d is not a JSON object", i)
	}
	typ, _ := m["resourceType"].(string)
	id, _ := m["id"].(string)
	name := typ
	if id != "" {
		name += "/" + clip(id, 64)
	}
	switch {
	case typ == "":
		return nil, fmt.Errorf("entry %d has no resourceType", i)
	case !pp.model.IsResource(typ):
		return nil, fmt.Errorf("entry %d is a %q, not a FHIR R4 resource", i, clip(typ, 64))
	}
	if neverIngested[typ] {
		return &pageResource{index: i, typ: typ}, nil
	}
	if issues := pp.model.Validate(m); len(issues) > 0 {
		return nil, fmt.Errorf("entry %d (%s) is not valid FHIR R4: %s: %s", i, name, issues[0].Path, issues[0].Message)
	}
	r := &pageResource{index: i, typ: typ, raw: raw, m: m, refMaps: refMaps}
	switch {
	case id != "":
		r.srcID = id
		r.source = pp.base + "/" + typ + "/" + id
	case fullURL != "":
		// No id (a collection Bundle): the fullUrl is the identity.
		r.srcID = fullURL
		r.source = fullURL
	default:
		return nil, fmt.Errorf("entry %d (%s) has neither an id nor a fullUrl, so it could not be recognized when it comes again", i, typ)
	}
	r.setLocalID(localID(pp.base, typ, r.srcID))
	for _, rm := range refMaps {
		if t, id, _, ok := pp.sourceRef(rm["reference"].(string)); ok {
			r.refs = append(r.refs, t+"/"+localID(pp.base, t, id))
		}
	}
	return r, nil
}

// sourceRef splits a reference to a resource at the source: relative
// (Type/id, Type/id/_history/n) or absolute under the source base. suffix is
// the /_history/n part.
func (pp *preparer) sourceRef(ref string) (typ, id, suffix string, ok bool) {
	r := ref
	if rest, abs := strings.CutPrefix(ref, pp.base+"/"); abs {
		r = rest
	} else if strings.Contains(ref, ":") {
		return "", "", "", false
	}
	if strings.ContainsAny(r, "?#") {
		return "", "", "", false
	}
	typ, rest, ok := strings.Cut(r, "/")
	if !ok {
		return "", "", "", false
	}
	id, version, versioned := strings.Cut(rest, "/")
	if versioned {
		v, ok := strings.CutPrefix(version, "_history/")
		if !ok || v == "" || strings.Contains(v, "/") {
			return "", "", "", false
		}
		suffix = "/_history/" + v
	}
	if !validID(id) || !pp.model.IsResource(typ) {
		return "", "", "", false
	}
	return typ, id, suffix, true
}

// finish rewrites every resource of pg for storage, given which targets
// outside the page exist here (present: the local ref of each, by the ref
// localID makes for it; see lookup) and what is stored now (current:
// local ref -> version and digest of what the last ingestion wrote). It
// marks resources that are stored as they are as unchanged, and prepares
// the others' index entries with st. amend, when set, may change a
// resource's document before its digest is taken.
func (pp *preparer) finish(pg *preparedPage, present map[string]string, current map[string]storedDigest, st *store.Store, amend func(*pageResource)) {
	inPage := make(map[string]string, 2*len(pg.resources))
	for _, r := range pg.resources {
		if !strings.Contains(r.srcID, ":") {
			inPage[r.typ+"/"+r.srcID] = r.localRef()
		}
		// fullUrls are matched as written; absolute URLs under the base are
		// matched through the Type/id they name.
	}
	fullURLs := map[string]string{}
	for _, r := range pg.resources {
		if strings.Contains(r.srcID, ":") {
			fullURLs[r.srcID] = r.localRef()
		}
	}
	pending := make([][]pendingRef, len(pg.resources))
	pp.parallel(len(pg.resources), func(i int) {
		r := pg.resources[i]
		record := true
		resolve := func(ref string) (string, bool) {
			if local, ok := fullURLs[ref]; ok {
				return local, true
			}
			typ, id, suffix, ok := pp.sourceRef(ref)
			if !ok {
				return ref, false
			}
			if local, ok := inPage[typ+"/"+id]; ok {
				return local, true
			}
			local := typ + "/" + localID(pp.base, typ, id)
			if here, ok := present[local]; ok {
				return here, true
			}
			abs := pp.base + "/" + typ + "/" + id + suffix
			if record {
				pending[i] = append(pending[i], pendingRef{target: local, referrer: r.localRef(), abs: abs, local: pp.expect})
			}
			if pp.expect {
				return local, true
			}
			return abs, abs != ref
		}
		canon, err := canonical(r.raw, r.localID, r.source, resolve)
		isCanonical := err == nil
		if err != nil {
			// The decoder accepted it, so this cannot happen; keep the
			// resource as the decoder saw it rather than lose it.
			canon, _ = json.Marshal(r.m)
		}
		// The same rewriting on the decoded form, which the index entries
		// and validators read.
		record = false
		for _, rm := range r.refMaps {
			if to, changed := resolve(rm["reference"].(string)); changed {
				rm["reference"] = to
			}
		}
		r.m["id"] = r.localID
		meta, _ := r.m["meta"].(map[string]any)
		if meta == nil {
			meta = map[string]any{}
			r.m["meta"] = meta
		}
		delete(meta, "versionId")
		delete(meta, "lastUpdated")
		meta["source"] = r.source
		r.doc = &store.Doc{Type: r.typ, ID: r.localID, Map: r.m, JSON: canon, Canonical: isCanonical}
		r.raw, r.m, r.refMaps = nil, nil, nil
	})
	for _, p := range pending {
		pg.pending = append(pg.pending, p...)
	}
	for _, r := range pg.resources {
		if amend != nil {
			amend(r)
		}
		pp.digest(r, current)
	}
	var todo []*pageResource
	for _, r := range pg.resources {
		if !r.unchanged {
			todo = append(todo, r)
		}
	}
	// One stamp for the page: the writer keeps a stamp that is not
	// before any it has written, so the page's resources (and its
	// Provenance, see recordWritten) are written as prepared rather than
	// stamped again, as they would be if prepared each at its own time
	// on several goroutines.
	pg.stamped = time.Now().UTC().Truncate(time.Microsecond)
	pp.parallel(len(todo), func(i int) { st.PrepareAt(todo[i].doc, pg.stamped) })
}

// digest computes r's digest and marks it unchanged when the store holds
// exactly what the last ingestion wrote and that equals r.
func (pp *preparer) digest(r *pageResource, current map[string]storedDigest) {
	r.digest = sha256.Sum256(r.doc.JSON)
	if c, ok := current[r.localRef()]; ok && c.digestVersion == c.version && c.digest == r.digest {
		r.unchanged, r.version = true, c.version
	}
}

// parallel runs f(0..n-1) on up to pp.workers goroutines.
func (pp *preparer) parallel(n int, f func(i int)) {
	w := min(pp.workers, (n+31)/32)
	if w <= 1 {
		for i := range n {
			f(i)
		}
		return
	}
	var wg sync.WaitGroup
	chunk := (n + w - 1) / w
	for start := 0; start < n; start += chunk {
		end := min(start+chunk, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := start; i < end; i++ {
				f(i)
			}
		}()
	}
	wg.Wait()
}

func defaultPrepWorkers() int { return max(1, runtime.GOMAXPROCS(0)) }

// storedDigest is what the store holds for a local ref: its current
// version, and the version and digest the last ingestion wrote.
type storedDigest struct {
	version       int64
	digestVersion int64
	digest        [sha256.Size]byte
}

// outcomeText renders OperationOutcome issues for a failure reason.
func outcomeText(issues []issue) string {
	var parts []string
	for _, is := range issues {
		s := is.code
		if is.diagnostics != "" {
			s += ": " + is.diagnostics
		}
		parts = append(parts, clip(s, 200))
		if len(parts) == 3 {
			break
		}
	}
	if len(parts) == 0 {
		return "no details given"
	}
	return strings.Join(parts, "; ")
}

// clip shortens s to n bytes for a message, and keeps only printable text:
// what a source payer sends is quoted to admins, never trusted.
func clip(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "") + "…"
	}
	return s
}

// sameOrigin reports whether u has the scheme, host and port of base.
func sameOrigin(u, base *url.URL) bool {
	return strings.EqualFold(u.Scheme, base.Scheme) && strings.EqualFold(u.Host, base.Host) && u.User == nil
}
