package eligibility

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/p2pserver/p2pserver/fhir"
	"github.com/p2pserver/p2pserver/fhir/store"
	"github.com/p2pserver/p2pserver/fhir/workflow"
	"github.com/p2pserver/p2pserver/internal/errs"
	"github.com/p2pserver/p2pserver/internal/lease"
	"github.com/p2pserver/p2pserver/internal/secrets"
)

// Options are the Service's collaborators.
type Options struct {
	// Connectors are the vendor adapters; every route's vendor needs one.
	Connectors []Connector
	// Cipher encrypts datasource credentials and relayed 2FA codes at
	// rest. Without one, connections cannot be created.
	Cipher *secrets.Cipher
	// Admin guards the admin routes (see httpapi.Authorizer.Require).
	Admin func(http.Handler) http.Handler
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Leases gives each check's step (a vendor call and its record) to one
	// process at a time among those sharing the database; nil: the
	// Service makes its own and releases it on Close.
	Leases *lease.Manager
}

// Service is the eligibility facade: validator, hook, operations, worker
// and /api routes. Build it with New, start the worker with Start, stop it
// with Close.
type Service struct {
	fs     *fhir.Server
	st     *store.Store
	cfg    Config
	log    *slog.Logger
	cipher *secrets.Cipher
	admin  func(http.Handler) http.Handler
	now    func() time.Time

	routes map[string]Route
	conns  map[string]Connector
	order  []Connector
	rows   []StatusMapping
	table  map[string]StatusMapping

	wake chan struct{}

	leases    *lease.Manager
	ownLeases bool

	mu      sync.Mutex
	busy    map[string]bool
	waiters map[string][]chan struct{}
	cancel  context.CancelFunc
	done    chan struct{}
	ready   chan struct{}
}

// KV buckets.
const (
	bJobs        = "eligibility_jobs"        // request id -> job
	bRefs        = "eligibility_refs"        // vendor 0 ref 0 request id -> ""
	bTasks       = "eligibility_tasks"       // task id -> request id
	bMarks       = "eligibility_marks"       // request id -> Request, validator to hook
	bDeliveries  = "eligibility_deliveries"  // vendor 0 delivery id -> time
	bEarly       = "eligibility_early"       // vendor 0 ref -> time: a webhook about a ref no job knows yet
	bPriors      = "eligibility_priors"      // vendor 0 payer 0 member id -> vendor ref
	bConnections = "eligibility_connections" // connection id -> record
	bChecks      = "eligibility_checks"      // request id -> check (kept)
)

// check names the resources of one check; it outlives the job.
type check struct {
	TaskID     string `json:"taskId"`
	ResponseID string `json:"responseId"`
	Vendor     string `json:"vendor"`
}

func getCheck(tx *store.Tx, reqID string) (*check, error) {
	b := tx.KV(bChecks).Get([]byte(reqID))
	if b == nil {
		return nil, errs.E("eligibility.check", errs.NotFound, "CoverageEligibilityRequest/"+reqID+" started no eligibility check")
	}
	var c check
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, errs.E("eligibility.check", errs.Internal, err)
	}
	return &c, nil
}

// New builds the Service and registers it with fs: the validators of
// CoverageEligibilityRequest and Task, the store hook, and the operations
// $submit and $confirm-2fa. It refuses a route whose vendor has no
// connector and a connector whose status table contradicts itself.
func New(fs *fhir.Server, cfg Config, opts Options) (*Service, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	s := &Service{
		fs: fs, st: fs.Store(), cfg: cfg, log: opts.Logger, cipher: opts.Cipher, admin: opts.Admin, now: opts.Now,
		routes: map[string]Route{}, conns: map[string]Connector{}, table: map[string]StatusMapping{},
		wake: make(chan struct{}, 1), ready: make(chan struct{}), busy: map[string]bool{}, waiters: map[string][]chan struct{}{},
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.admin == nil {
		return nil, fmt.Errorf("eligibility: no admin middleware given")
	}
	if s.leases = opts.Leases; s.leases == nil {
		s.leases, s.ownLeases = lease.New(s.st, lease.Config{Now: s.now, Logger: s.log}), true
	}
	for _, c := range opts.Connectors {
		if _, dup := s.conns[c.Vendor()]; dup {
			return nil, fmt.Errorf("eligibility: two connectors for vendor %q", c.Vendor())
		}
		s.conns[c.Vendor()] = c
		s.order = append(s.order, c)
	}
	for _, r := range cfg.Routes {
		if s.conns[r.Vendor] == nil {
			return nil, fmt.Errorf("eligibility: payer %s is routed to vendor %q, for which no connector is built", r.PayerID, r.Vendor)
		}
		s.routes[r.PayerID] = r
	}
	rows, err := StatusTable(s.order...)
	if err != nil {
		return nil, err
	}
	s.rows = rows
	for _, r := range rows {
		s.table[r.Vendor+"\x00"+r.Status] = r
	}
	fs.AddValidator("CoverageEligibilityRequest", s.validateRequest)
	fs.AddValidator("Task", s.validateTask)
	s.st.AddHook(s.hook)
	fs.AddOperation(&fhir.Operation{Name: "submit", Types: []string{"CoverageEligibilityRequest"}, Type: true,
		Definition: OperationSubmit, Handler: s.submit})
	fs.AddOperation(&fhir.Operation{Name: "confirm-2fa", Types: []string{"Task"}, Instance: true,
		Definition: OperationConfirm2FA, Handler: s.confirm2FA})
	return s, nil
}

// Canonical URLs of the operations, for the CapabilityStatement.
const (
	OperationSubmit     = "http://payer-to-payer-exchange/OperationDefinition/CoverageEligibilityRequest-submit"
	OperationConfirm2FA = "http://payer-to-payer-exchange/OperationDefinition/Task-confirm-2fa"
)

// Table returns the status table the Service maps vendor statuses with.
func (s *Service) Table() []StatusMapping { return append([]StatusMapping(nil), s.rows...) }

// Prepared is closed once the connectors have been prepared (see
// Preparer) after Start.
func (s *Service) Prepared() <-chan struct{} { return s.ready }

// Start starts the worker. Jobs recorded before a restart are picked up.
func (s *Service) Start(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancel != nil {
		return
	}
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan struct{})
	if s.ownLeases {
		s.leases.Start(ctx)
	}
	go s.loop(ctx)
}

// Close stops the worker and waits for the vendor calls under way to end
// (their contexts are cancelled; a call cut short is retried after a
// restart).
func (s *Service) Close() error {
	s.mu.Lock()
	cancel, done := s.cancel, s.done
	s.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	<-done
	if s.ownLeases {
		return s.leases.Close()
	}
	return nil
}

func (s *Service) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// route finds the route for the first of the request's payer ids that has
// one.
func (s *Service) route(req *Request) (Route, bool) {
	for _, id := range req.PayerIDs {
		if r, ok := s.routes[id]; ok {
			return r, true
		}
	}
	return Route{}, false
}

// prepare extracts the request and checks routing and required fields; it
// is the validator's work, also used by tests.
func (s *Service) prepare(tx *store.Tx, id string, m map[string]any) (*Request, Route, error) {
	const op = "eligibility.validate"
	req, issues, err := ExtractRequest(tx, s.fs.Policy(), id, m, s.now())
	if err != nil {
		return nil, Route{}, err
	}
	route, ok := s.route(req)
	if !ok {
		msg := "the request names no payer: give the insurer Organization an identifier (the payer id)"
		if len(req.PayerIDs) > 0 {
			msg = fmt.Sprintf("no eligibility vendor is configured for payer %s", strings.Join(req.PayerIDs, " or "))
		}
		issues = append(issues, errs.Issue{Code: "not-supported", Path: "CoverageEligibilityRequest.insurer", Message: msg})
		return nil, Route{}, errs.E(op, errs.Unprocessable, msg, issues)
	}
	req.PayerID = route.PayerID
	applyDefaults(route, req)
	conn := s.conns[route.Vendor]
	problems := Missing(req, "payer "+route.Label(), route.RequiredFields...)
	problems = append(problems, conn.Check(route, req)...)
	seen := map[Field]bool{}
	for _, p := range problems {
		if seen[p.Field] {
			continue
		}
		seen[p.Field] = true
		issues = append(issues, errs.Issue{Code: "required", Path: p.Field.Path(), Message: p.Message})
	}
	if len(issues) > 0 {
		var names []string
		for f := range seen {
			names = append(names, string(f))
		}
		sort.Strings(names)
		msg := fmt.Sprintf("the eligibility request cannot be sent to %s for payer %s", route.Vendor, route.Label())
		if len(names) > 0 {
			msg += ": missing or unusable " + strings.Join(names, ", ")
		}
		return nil, Route{}, errs.E(op, errs.Unprocessable, msg, issues)
	}
	return req, route, nil
}

// applyDefaults fills what a route supplies for items that lack it.
func applyDefaults(r Route, req *Request) {
	if len(req.Items) == 0 {
		req.Items = []Item{{}}
	}
	for i := range req.Items {
		it := &req.Items[i]
		if it.ServiceType == "" {
			it.ServiceType = r.ServiceType
			if it.ServiceType == "" {
				it.ServiceType = "30"
			}
		}
		if it.PlaceOfService == "" {
			it.PlaceOfService = r.PlaceOfService
		}
		if it.Specialty == "" {
			it.Specialty = r.Specialty
		}
	}
}

// validateRequest runs inside the write transaction of every
// CoverageEligibilityRequest written through the FHIR API. Only the
// creation of an active request starts a check; it is refused (422, one
// issue per problem) before any vendor is called when the payer has no
// route or the request lacks what the payer requires.
func (s *Service) validateRequest(tx *store.Tx, doc *store.Doc, prev *store.Version) error {
	// A copy of another payer's request (a P2P batch job brings the
	// member's history) is a record, not a question to ask a vendor.
	if prev != nil || doc.Map["status"] != "active" || workflow.Mirrored(doc.Map, s.fs.BaseURL()) {
		return nil
	}
	req, _, err := s.prepare(tx, doc.ID, doc.Map)
	if err != nil {
		return err
	}
	b, err := json.Marshal(req)
	if err != nil {
		return errs.E("eligibility.validate", errs.Internal, err)
	}
	// The hook, later in this transaction, turns the mark into a job. A
	// write that skips validators (a raw store write) leaves no mark and
	// starts no check.
	return tx.KV(bMarks).Put([]byte(doc.ID), b)
}

// hook records the job and creates the Task, in the transaction that
// creates the request.
func (s *Service) hook(tx *store.Tx, ev store.Event) error {
	v := ev.Version
	if v.Type != "CoverageEligibilityRequest" || ev.Op != store.OpCreate {
		return nil
	}
	marks := tx.KV(bMarks)
	raw := marks.Get([]byte(v.ID))
	if raw == nil {
		return nil
	}
	if err := marks.Delete([]byte(v.ID)); err != nil {
		return err
	}
	var req Request
	if err := json.Unmarshal(raw, &req); err != nil {
		return errs.E("eligibility.hook", errs.Internal, err)
	}
	route := s.routes[req.PayerID]
	if p := tx.KV(bPriors).Get(priorKey(route.Vendor, req.PayerID, req.MemberID)); p != nil {
		req.Prior = string(p)
	}
	now := s.now().UTC()
	j := &job{
		RequestID: v.ID, TaskID: fhir.NewID(), ResponseID: fhir.NewID(),
		Vendor: route.Vendor, PayerID: route.PayerID, Req: req,
		State: stateSubmit, NextAt: now, Created: now,
	}
	m, err := decodeMap(v.JSON)
	if err != nil {
		return errs.E("eligibility.hook", errs.Internal, err)
	}
	patientRef := str(obj(m["patient"])["reference"])
	if strings.HasPrefix(patientRef, "#") {
		patientRef = ""
	}
	t := newTask(j.TaskID, v.ID, patientRef, route.Vendor, route.Label(), now)
	tb, err := json.Marshal(t)
	if err != nil {
		return errs.E("eligibility.hook", errs.Internal, err)
	}
	tm, err := decodeMap(tb)
	if err != nil {
		return errs.E("eligibility.hook", errs.Internal, err)
	}
	// The Task is the server's own record of its work: it is written
	// without the requester's access rights, which may not include Task.
	if _, err := tx.Put(&store.Doc{Type: "Task", ID: j.TaskID, Map: tm, JSON: tb}, store.PutOptions{CreateOnly: true}); err != nil {
		return err
	}
	if err := tx.KV(bTasks).Put([]byte(j.TaskID), []byte(v.ID)); err != nil {
		return err
	}
	cb, err := json.Marshal(check{TaskID: j.TaskID, ResponseID: j.ResponseID, Vendor: j.Vendor})
	if err != nil {
		return errs.E("eligibility.hook", errs.Internal, err)
	}
	if err := tx.KV(bChecks).Put([]byte(v.ID), cb); err != nil {
		return err
	}
	if err := putJob(tx, j); err != nil {
		return err
	}
	tx.AfterCommit(s.poke)
	return nil
}

func priorKey(vendor, payer, member string) []byte {
	return []byte(vendor + "\x00" + payer + "\x00" + member)
}

type workerKey struct{}

// workerContext marks writes the Service makes itself, which the Task
// validator lets through.
func workerContext(ctx context.Context) context.Context {
	return context.WithValue(context.WithoutCancel(ctx), workerKey{}, true)
}

func fromWorker(ctx context.Context) bool { v, _ := ctx.Value(workerKey{}).(bool); return v }

// validateTask guards the Tasks that track checks: their status is the
// server's to change, except that a client may relay a 2FA code by filling
// the value of the on-hold Task's 2fa-code input, and may cancel the check
// by setting the status to cancelled.
func (s *Service) validateTask(tx *store.Tx, doc *store.Doc, prev *store.Version) error {
	const op = "eligibility.task"
	if prev == nil || fromWorker(tx.Context()) {
		return nil
	}
	reqID := tx.KV(bTasks).Get([]byte(doc.ID))
	if reqID == nil {
		return nil
	}
	pm, err := decodeMap(prev.JSON)
	if err != nil {
		return errs.E(op, errs.Internal, err)
	}
	before, after := str(pm["status"]), str(doc.Map["status"])
	j, err := getJob(tx, string(reqID))
	if err != nil {
		return err
	}
	code := twoFactorValue(doc.Map)
	switch {
	case code != "":
		if j == nil || j.State != stateHold {
			return errs.E(op, errs.Conflict, "this eligibility check is not waiting for a 2FA code")
		}
		sealed, err := s.cipher.Seal([]byte(code))
		if err != nil {
			// Without a key the code is kept only in the job record, which
			// is deleted once it is relayed.
			sealed = append([]byte{0}, code...)
		} else {
			sealed = append([]byte{1}, sealed...)
		}
		j.Code = sealed
		j.State = stateRelay
		j.Seq++
		j.NextAt = s.now().UTC()
		if err := putJob(tx, j); err != nil {
			return err
		}
		// The code is not stored in the Task: the input goes back to
		// "asked", and the Task says the code is on its way.
		if err := setTwoFactorInput(doc, ""); err != nil {
			return errs.E(op, errs.Internal, err)
		}
		if err := setTaskState(doc, TaskInProgress, "2FA code received; relaying it to the payer portal", "", s.now()); err != nil {
			return errs.E(op, errs.Internal, err)
		}
		tx.AfterCommit(s.poke)
		return nil
	case after == "cancelled" && before != "cancelled":
		if j != nil {
			if err := deleteJob(tx, j); err != nil {
				return err
			}
			tx.AfterCommit(func() { s.notify(j.RequestID) })
		}
		return nil
	case after != before:
		return errs.E(op, errs.Unprocessable, "the status of an eligibility Task is kept by the server",
			errs.Issue{Code: "business-rule", Path: "Task.status",
				Message: "only cancelled may be set by a client; to relay a 2FA code fill the value of the 2fa-code input or call $confirm-2fa"})
	}
	return nil
}

// twoFactorValue returns the value a client put in the 2fa-code input.
func twoFactorValue(m map[string]any) string {
	for _, in := range arr(m["input"]) {
		im := obj(in)
		if hasCoding(obj(im["type"]), TaskSystem, InputTwoFactorCode) {
			if v := strings.TrimSpace(str(im["valueString"])); v != "" {
				return v
			}
		}
	}
	return ""
}
