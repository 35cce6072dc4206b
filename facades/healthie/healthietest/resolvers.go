package healthietest

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	graphql "github.com/graph-gophers/graphql-go"
)

// Resolvers run while the simulator's lock is held by the request (see
// serveGraphQL), so they read and write State directly.

// Cursor is the Cursor scalar: base64 of {"k":[sort key, id]}, like the
// cursors in Healthie's documentation.
type Cursor string

// ImplementsGraphQLType binds Cursor to the schema's Cursor scalar.
func (Cursor) ImplementsGraphQLType(name string) bool { return name == "Cursor" }

// UnmarshalGraphQL reads a Cursor argument.
func (c *Cursor) UnmarshalGraphQL(input any) error {
	s, ok := input.(string)
	if !ok {
		return fmt.Errorf("a Cursor is a string, not %T", input)
	}
	*c = Cursor(s)
	return nil
}

// MarshalJSON writes a Cursor as a JSON string.
func (c Cursor) MarshalJSON() ([]byte, error) { return json.Marshal(string(c)) }

func makeCursor(key, id string) Cursor {
	b, _ := json.Marshal(map[string][]string{"k": {key, id}})
	return Cursor(base64.StdEncoding.EncodeToString(b))
}

func parseCursor(c Cursor) (key, id string, err error) {
	b, err := base64.StdEncoding.DecodeString(string(c))
	if err != nil {
		return "", "", fmt.Errorf("invalid cursor")
	}
	var v struct {
		K []string `json:"k"`
	}
	if json.Unmarshal(b, &v) != nil || len(v.K) != 2 {
		return "", "", fmt.Errorf("invalid cursor")
	}
	return v.K[0], v.K[1], nil
}

func str(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func i32(n int) *int32   { v := int32(n); return &v }
func boolp(b bool) *bool { return &b }

func stamp(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	return str(t.UTC().Format("2006-01-02 15:04:05 -0700"))
}

// idLess orders numeric ids numerically.
func idLess(a, b string) bool {
	na, ea := strconv.Atoi(a)
	nb, eb := strconv.Atoi(b)
	if ea == nil && eb == nil {
		return na < nb
	}
	return a < b
}

// page cuts one offset page out of items; page_size defaults to 10 as
// Healthie's does, and should_paginate false returns everything.
func page[T any](items []T, offset, pageSize *int32, paginate *bool) []T {
	if paginate != nil && !*paginate {
		return items
	}
	off, size := 0, 10
	if offset != nil && *offset > 0 {
		off = int(*offset)
	}
	if pageSize != nil && *pageSize > 0 {
		size = min(int(*pageSize), 100)
	}
	if off >= len(items) {
		return []T{}
	}
	return items[off:min(off+size, len(items))]
}

// matchKeywords: every term must occur in one of the fields, as Healthie
// documents for users(keywords:).
func matchKeywords(keywords *string, fields ...string) bool {
	if keywords == nil {
		return true
	}
	for _, term := range strings.Fields(strings.ToLower(*keywords)) {
		found := false
		for _, f := range fields {
			if f != "" && strings.Contains(strings.ToLower(f), term) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

type root struct{ s *Simulator }

type idArg struct{ ID *graphql.ID }

func (a idArg) id() string {
	if a.ID == nil {
		return ""
	}
	return string(*a.ID)
}

// ---- users ----

type userView struct {
	s *Simulator
	u *User
}

func (r *root) user(id string) *userView {
	if u, ok := r.s.st.Users[id]; ok {
		return &userView{r.s, u}
	}
	return nil
}

func (v *userView) ID() graphql.ID            { return graphql.ID(v.u.ID) }
func (v *userView) FirstName() *string        { return str(v.u.FirstName) }
func (v *userView) LastName() *string         { return str(v.u.LastName) }
func (v *userView) LegalName() *string        { return str(v.u.LegalName) }
func (v *userView) FullName() *string         { return str(v.u.FullName()) }
func (v *userView) Dob() *string              { return str(v.u.DOB) }
func (v *userView) Gender() *string           { return str(v.u.Gender) }
func (v *userView) Email() *string            { return str(v.u.Email) }
func (v *userView) PhoneNumber() *string      { return str(v.u.PhoneNumber) }
func (v *userView) Active() *bool             { return boolp(!v.u.Archived) }
func (v *userView) RecordIdentifier() *string { return str(v.u.RecordIdentifier) }
func (v *userView) Npi() *string              { return str(v.u.NPI) }
func (v *userView) Qualifications() *string   { return str(v.u.Qualifications) }
func (v *userView) OrgRole() *string          { return str(v.u.OrgRole) }
func (v *userView) IsPatient() *bool          { return boolp(v.u.IsPatient) }
func (v *userView) DietitianId() *string      { return str(v.u.DietitianID) }
func (v *userView) CreatedAt() *string        { return stamp(v.u.CreatedAt) }
func (v *userView) UpdatedAt() *string        { return stamp(v.u.UpdatedAt) }

func (v *userView) Organization() *orgView {
	if v.u.IsPatient {
		return nil // patients belong to providers, not to an organization
	}
	return &orgView{v.s}
}

func (v *userView) Location() *locationView {
	a := v.u.Address
	if a == nil {
		return nil
	}
	return &locationView{&Location{ID: "addr-" + v.u.ID, Line1: a.Line1, Line2: a.Line2, City: a.City, State: a.State, Zip: a.Zip, Country: a.Country, UserID: v.u.ID}}
}

func (v *userView) Policies() *[]*policyView {
	var out []*policyView
	for _, p := range v.s.st.Policies {
		if p.UserID == v.u.ID {
			out = append(out, &policyView{v.s, p})
		}
	}
	sort.Slice(out, func(i, j int) bool { return idLess(out[i].p.ID, out[j].p.ID) })
	if out == nil {
		out = []*policyView{}
	}
	return &out
}

func (r *root) User(a idArg) *userView {
	if v := r.user(a.id()); v != nil {
		return v
	}
	return nil
}

type usersArgs struct {
	Offset         *int32
	PageSize       *int32
	Keywords       *string
	ActiveStatus   *string
	ShouldPaginate *bool
	OrderBy        *string
	SortBy         *string
}

// errSortByRemoved answers a query that still sends the string sort_by
// argument: Healthie deprecated it on November 6, 2023 (flagged with
// @deprecated) and announced its removal for August 6, 2024, recommending
// the enum order_by arguments.
var errSortByRemoved = errors.New("sort_by: string-based sort_by arguments were deprecated on November 6, 2023 and removed on August 6, 2024; use the enum order_by argument")

func (r *root) Users(a usersArgs) ([]*userView, error) {
	if a.SortBy != nil {
		return nil, errSortByRemoved
	}
	var out []*userView
	for _, u := range r.s.st.Users {
		if !u.IsPatient {
			continue
		}
		if a.ActiveStatus != nil {
			if (*a.ActiveStatus == "active" && u.Archived) || (*a.ActiveStatus == "archived" && !u.Archived) {
				continue
			}
		}
		if !matchKeywords(a.Keywords, u.ID, u.FirstName, u.LegalName, u.LastName, u.RecordIdentifier, u.Email, u.DOB, u.NPI) {
			continue
		}
		out = append(out, &userView{r.s, u})
	}
	by := "LAST_NAME_DESC" // Healthie's default
	if a.OrderBy != nil {
		by = *a.OrderBy
	}
	if err := sortUsers(out, by); err != nil {
		return nil, err
	}
	return page(out, a.Offset, a.PageSize, a.ShouldPaginate), nil
}

// sortUsers orders by a UserOrderKeys value, then id, so offsets are
// stable. The keys on data the simulator does not keep (groups, providers,
// next appointments) are refused rather than ignored.
func sortUsers(out []*userView, by string) error {
	field, desc := strings.CutSuffix(by, "_DESC")
	if !desc {
		var asc bool
		if field, asc = strings.CutSuffix(by, "_ASC"); !asc {
			return fmt.Errorf("order_by: %q is not a UserOrderKeys value", by)
		}
	}
	var cmp func(a, b *User) int
	switch field {
	case "LAST_NAME":
		cmp = func(a, b *User) int { return strings.Compare(a.LastName, b.LastName) }
	case "FIRST_NAME":
		cmp = func(a, b *User) int { return strings.Compare(a.FirstName, b.FirstName) }
	case "EMAIL":
		cmp = func(a, b *User) int { return strings.Compare(a.Email, b.Email) }
	case "CREATED_AT":
		cmp = func(a, b *User) int { return a.CreatedAt.Compare(b.CreatedAt) }
	case "UPDATED_AT":
		cmp = func(a, b *User) int { return a.UpdatedAt.Compare(b.UpdatedAt) }
	default:
		return fmt.Errorf("order_by: the simulator does not sort users by %s", by)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].u, out[j].u
		if c := cmp(a, b); c != 0 {
			return (c < 0) != desc
		}
		return idLess(a.ID, b.ID)
	})
	return nil
}

type membersArgs struct {
	Offset   *int32
	PageSize *int32
	Keywords *string
	SortBy   *string
}

func (r *root) OrganizationMembers(a membersArgs) ([]*userView, error) {
	if a.SortBy != nil {
		return nil, errSortByRemoved
	}
	var out []*userView
	for _, u := range r.s.st.Users {
		if u.IsPatient || !matchKeywords(a.Keywords, u.FirstName, u.LastName, u.Email, u.NPI) {
			continue
		}
		out = append(out, &userView{r.s, u})
	}
	if err := sortUsers(out, "LAST_NAME_ASC"); err != nil {
		return nil, err
	}
	return page(out, a.Offset, a.PageSize, nil), nil
}

// ---- organization and locations ----

type orgView struct{ s *Simulator }

func (v *orgView) ID() graphql.ID       { return graphql.ID(v.s.st.Org.ID) }
func (v *orgView) Name() *string        { return str(v.s.st.Org.Name) }
func (v *orgView) Npi() *string         { return str(v.s.st.Org.NPI) }
func (v *orgView) TaxId() *string       { return str(v.s.st.Org.TaxID) }
func (v *orgView) TaxIdType() *string   { return str(v.s.st.Org.TaxIDType) }
func (v *orgView) PhoneNumber() *string { return str(v.s.st.Org.PhoneNumber) }
func (v *orgView) Location() *locationView {
	a := v.s.st.Org.Address
	if a == nil {
		return nil
	}
	return &locationView{&Location{ID: "addr-org-" + v.s.st.Org.ID, Line1: a.Line1, Line2: a.Line2, City: a.City, State: a.State, Zip: a.Zip, Country: a.Country}}
}

func (r *root) Organization(a idArg) *orgView {
	if id := a.id(); id != "" && id != r.s.st.Org.ID {
		return nil
	}
	return &orgView{r.s}
}

type locationView struct{ l *Location }

func (v *locationView) ID() graphql.ID   { return graphql.ID(v.l.ID) }
func (v *locationView) Name() *string    { return str(v.l.Name) }
func (v *locationView) Line1() *string   { return str(v.l.Line1) }
func (v *locationView) Line2() *string   { return str(v.l.Line2) }
func (v *locationView) City() *string    { return str(v.l.City) }
func (v *locationView) State() *string   { return str(v.l.State) }
func (v *locationView) Zip() *string     { return str(v.l.Zip) }
func (v *locationView) Country() *string { return str(v.l.Country) }
func (v *locationView) Npi() *string     { return str(v.l.NPI) }
func (v *locationView) UserId() *string  { return str(v.l.UserID) }

func (r *root) Location(a idArg) *locationView {
	if l, ok := r.s.st.Locations[a.id()]; ok {
		return &locationView{l}
	}
	return nil
}

type locationsArgs struct {
	Offset         *int32
	PageSize       *int32
	UserID         *graphql.ID
	ShouldPaginate *bool
}

func (r *root) Locations(a locationsArgs) []*locationView {
	var out []*locationView
	for _, l := range r.s.st.Locations {
		if a.UserID != nil && l.UserID != string(*a.UserID) {
			continue
		}
		out = append(out, &locationView{l})
	}
	sort.Slice(out, func(i, j int) bool { return idLess(out[i].l.ID, out[j].l.ID) })
	return page(out, a.Offset, a.PageSize, a.ShouldPaginate)
}

// ---- appointments ----

type apptView struct {
	s *Simulator
	a *Appointment
}

const healthieTime = "2006-01-02 15:04:05 MST"

func (v *apptView) ID() graphql.ID       { return graphql.ID(v.a.ID) }
func (v *apptView) Cursor() Cursor       { return makeCursor(v.a.Date.UTC().Format(time.RFC3339), v.a.ID) }
func (v *apptView) Date() *string        { return str(v.a.Date.UTC().Format(healthieTime)) }
func (v *apptView) ContactType() *string { return str(v.a.ContactType) }
func (v *apptView) Length() *int32 {
	if v.a.Length > 0 {
		return i32(v.a.Length)
	}
	if t := v.s.st.AppointmentTypes[v.a.TypeID]; t != nil {
		return i32(t.Length)
	}
	return nil
}
func (v *apptView) Location() *string          { return str(v.a.Location) }
func (v *apptView) PmStatus() *string          { return str(v.a.PMStatus) }
func (v *apptView) Notes() *string             { return str(v.a.Notes) }
func (v *apptView) AppointmentTypeId() *string { return str(v.a.TypeID) }
func (v *apptView) AppointmentType() *apptTypeView {
	if t := v.s.st.AppointmentTypes[v.a.TypeID]; t != nil {
		return &apptTypeView{t}
	}
	return nil
}
func (v *apptView) Provider() *userView { return (&root{v.s}).user(v.a.ProviderID) }
func (v *apptView) User() *userView     { return (&root{v.s}).user(v.a.PatientID) }
func (v *apptView) Attendees() []*userView {
	if u := (&root{v.s}).user(v.a.PatientID); u != nil {
		return []*userView{u}
	}
	return []*userView{}
}
func (v *apptView) CreatedAt() *string { return stamp(v.a.CreatedAt) }
func (v *apptView) UpdatedAt() *string { return stamp(v.a.UpdatedAt) }
func (v *apptView) DeletedAt() *string { return stamp(v.a.DeletedAt) }

type apptArgs struct {
	ID             *graphql.ID
	IncludeDeleted *bool
}

func (r *root) Appointment(a apptArgs) *apptView {
	if a.ID == nil {
		return nil
	}
	ap, ok := r.s.st.Appointments[string(*a.ID)]
	if !ok || (!ap.DeletedAt.IsZero() && (a.IncludeDeleted == nil || !*a.IncludeDeleted)) {
		return nil
	}
	return &apptView{r.s, ap}
}

type apptsArgs struct {
	UserID          *graphql.ID
	ProviderID      *graphql.ID
	Filter          *string
	IsOrg           *bool
	OrderBy         *string
	ShouldPaginate  *bool
	Offset          *int32
	PageSize        *int32
	After           *Cursor
	IsActive        *bool
	WithAllStatuses *bool
}

func (r *root) Appointments(a apptsArgs) ([]*apptView, error) {
	filter := "future"
	if a.Filter != nil && *a.Filter != "" {
		filter = *a.Filter
	}
	now := r.s.now()
	var out []*apptView
	for _, ap := range r.s.st.Appointments {
		if !ap.DeletedAt.IsZero() {
			continue
		}
		switch filter {
		case "future", "upcoming":
			if ap.Date.Before(now) {
				continue
			}
		case "past", "ended":
			if !ap.Date.Before(now) {
				continue
			}
		case "all":
		default:
			return nil, fmt.Errorf("filter %q is not one of future, upcoming, past, ended, all", filter)
		}
		if a.UserID != nil && ap.PatientID != string(*a.UserID) && ap.ProviderID != string(*a.UserID) {
			continue
		}
		if a.ProviderID != nil && ap.ProviderID != string(*a.ProviderID) {
			continue
		}
		if a.UserID == nil && a.ProviderID == nil && (a.IsOrg == nil || !*a.IsOrg) && ap.ProviderID != r.s.currentUser {
			continue // without is_org, the authenticated provider's own calendar
		}
		all := a.WithAllStatuses != nil && *a.WithAllStatuses
		if !all && a.IsActive != nil && *a.IsActive && ap.PMStatus != "" && ap.PMStatus != "Occurred" {
			continue
		}
		out = append(out, &apptView{r.s, ap})
	}
	desc := a.OrderBy != nil && *a.OrderBy == "DATE_DESC"
	key := func(v *apptView) string { return v.a.Date.UTC().Format(time.RFC3339) }
	less := func(k1, id1, k2, id2 string) bool {
		if k1 != k2 {
			return k1 < k2
		}
		return idLess(id1, id2)
	}
	sort.Slice(out, func(i, j int) bool {
		if desc {
			return less(key(out[j]), out[j].a.ID, key(out[i]), out[i].a.ID)
		}
		return less(key(out[i]), out[i].a.ID, key(out[j]), out[j].a.ID)
	})
	if a.After != nil && *a.After != "" {
		k, id, err := parseCursor(*a.After)
		if err != nil {
			return nil, err
		}
		i := 0
		for i < len(out) {
			after := less(k, id, key(out[i]), out[i].a.ID)
			if desc {
				after = less(key(out[i]), out[i].a.ID, k, id)
			}
			if after {
				break
			}
			i++
		}
		out = out[i:]
		a.Offset = nil
	}
	paginate := a.ShouldPaginate
	if paginate == nil {
		paginate = boolp(false) // appointments are unpaginated unless asked
	}
	return page(out, a.Offset, a.PageSize, paginate), nil
}

type apptTypeView struct{ t *AppointmentType }

func (v *apptTypeView) ID() graphql.ID { return graphql.ID(v.t.ID) }
func (v *apptTypeView) Name() *string  { return str(v.t.Name) }
func (v *apptTypeView) Length() *int32 { return i32(v.t.Length) }
func (v *apptTypeView) IsGroup() *bool { return boolp(v.t.IsGroup) }
func (v *apptTypeView) AvailableContactTypes() *[]string {
	out := slices.Clone(v.t.ContactTypes)
	if out == nil {
		out = []string{}
	}
	return &out
}

func (r *root) AppointmentType(a idArg) *apptTypeView {
	if t, ok := r.s.st.AppointmentTypes[a.id()]; ok {
		return &apptTypeView{t}
	}
	return nil
}

// ---- insurance ----

type policyView struct {
	s *Simulator
	p *Policy
}

func (v *policyView) ID() graphql.ID              { return graphql.ID(v.p.ID) }
func (v *policyView) Name() *string               { return str(v.p.Name) }
func (v *policyView) Num() *string                { return str(v.p.Num) }
func (v *policyView) GroupNum() *string           { return str(v.p.GroupNum) }
func (v *policyView) PriorityType() *string       { return str(v.p.PriorityType) }
func (v *policyView) HolderFirst() *string        { return str(v.p.HolderFirst) }
func (v *policyView) HolderLast() *string         { return str(v.p.HolderLast) }
func (v *policyView) HolderDob() *string          { return str(v.p.HolderDOB) }
func (v *policyView) HolderRelationship() *string { return str(v.p.HolderRelationship) }
func (v *policyView) EffectiveStart() *string     { return str(v.p.EffectiveStart) }
func (v *policyView) EffectiveEnd() *string       { return str(v.p.EffectiveEnd) }
func (v *policyView) UserId() *string             { return str(v.p.UserID) }
func (v *policyView) User() *userView             { return (&root{v.s}).user(v.p.UserID) }
func (v *policyView) UpdatedAt() *string          { return stamp(v.p.UpdatedAt) }
func (v *policyView) InsurancePlan() *planView {
	if p := v.s.st.Plans[v.p.PlanID]; p != nil {
		return &planView{p}
	}
	return nil
}

func (r *root) Policy(a idArg) *policyView {
	if p, ok := r.s.st.Policies[a.id()]; ok {
		return &policyView{r.s, p}
	}
	return nil
}

type planView struct{ p *InsurancePlan }

func (v *planView) ID() graphql.ID { return graphql.ID(v.p.ID) }
func (v *planView) NameAndId() *string {
	return str(strings.TrimSuffix(v.p.PayerName+" - "+v.p.PayerID, " - "))
}
func (v *planView) PayerId() *string   { return str(v.p.PayerID) }
func (v *planView) PayerName() *string { return str(v.p.PayerName) }
func (v *planView) IsAccepted() *bool  { return boolp(v.p.Accepted) }

// ---- claims ----

type claimView struct {
	s *Simulator
	c *Claim
}

func (v *claimView) ID() graphql.ID               { return graphql.ID(v.c.ID) }
func (v *claimView) Status() *string              { return str(v.c.Status) }
func (v *claimView) Patient() *userView           { return (&root{v.s}).user(v.c.PatientID) }
func (v *claimView) PatientId() *string           { return str(v.c.PatientID) }
func (v *claimView) DietitianId() *string         { return str(v.c.ProviderID) }
func (v *claimView) RenderingProvider() *userView { return (&root{v.s}).user(v.c.ProviderID) }
func (v *claimView) ServiceLocation() *locationView {
	return (&root{v.s}).Location(idArg{ID: idp(v.c.LocationID)})
}
func (v *claimView) ServiceLocationId() *string { return str(v.c.LocationID) }
func (v *claimView) DateOfService() *string     { return str(v.c.DateOfService) }
func (v *claimView) TotalCharge() *string       { return str(v.c.TotalCharge) }
func (v *claimView) AmountPaid() *string        { return str(v.c.AmountPaid) }
func (v *claimView) CreatedAt() *string         { return stamp(v.c.CreatedAt) }
func (v *claimView) UpdatedAt() *string         { return stamp(v.c.UpdatedAt) }

func (v *claimView) Cms1500Policies() *[]*cms1500PolicyView {
	out := []*cms1500PolicyView{}
	for i, id := range v.c.PolicyIDs {
		out = append(out, &cms1500PolicyView{v.s, fmt.Sprintf("%s-p%d", v.c.ID, i+1), id})
	}
	return &out
}

func (v *claimView) IcdCodesCms1500s() *[]*icdLineView {
	out := []*icdLineView{}
	for i, c := range v.c.ICD {
		out = append(out, &icdLineView{fmt.Sprintf("%s-i%d", v.c.ID, i+1), c})
	}
	return &out
}

func (v *claimView) CptCodesCms1500s() *[]*cptLineView {
	out := []*cptLineView{}
	for i, l := range v.c.Lines {
		out = append(out, &cptLineView{fmt.Sprintf("%s-c%d", v.c.ID, i+1), l})
	}
	return &out
}

func idp(s string) *graphql.ID { id := graphql.ID(s); return &id }

type cms1500PolicyView struct {
	s            *Simulator
	id, policyID string
}

func (v *cms1500PolicyView) ID() *graphql.ID   { return idp(v.id) }
func (v *cms1500PolicyView) PolicyId() *string { return str(v.policyID) }
func (v *cms1500PolicyView) Policy() *policyView {
	return (&root{v.s}).Policy(idArg{ID: idp(v.policyID)})
}

type icdLineView struct {
	id string
	c  Code
}

func (v *icdLineView) ID() *graphql.ID    { return idp(v.id) }
func (v *icdLineView) Active() *bool      { return boolp(true) }
func (v *icdLineView) IcdCode() *codeView { return &codeView{v.c} }

type codeView struct{ c Code }

func (v *codeView) ID() *graphql.ID      { return idp(v.c.Code) }
func (v *codeView) Code() *string        { return str(v.c.Code) }
func (v *codeView) DisplayName() *string { return str(v.c.Display) }

type cptLineView struct {
	id string
	l  ClaimLine
}

func (v *cptLineView) ID() *graphql.ID    { return idp(v.id) }
func (v *cptLineView) CptCode() *codeView { return &codeView{v.l.Code} }
func (v *cptLineView) Units() *int32      { return i32(v.l.Units) }
func (v *cptLineView) Fee() *string       { return str(v.l.Fee) }
func (v *cptLineView) mod(i int) *string {
	if i < len(v.l.Modifiers) {
		return str(v.l.Modifiers[i])
	}
	return nil
}
func (v *cptLineView) Mod1() *string { return v.mod(0) }
func (v *cptLineView) Mod2() *string { return v.mod(1) }
func (v *cptLineView) Mod3() *string { return v.mod(2) }
func (v *cptLineView) Mod4() *string { return v.mod(3) }
func (v *cptLineView) Pointers() *[]*string {
	out := []*string{}
	for _, p := range v.l.Pointers {
		out = append(out, str(strconv.Itoa(p)))
	}
	return &out
}
func (v *cptLineView) ServiceDate() *string { return str(v.l.ServiceDate) }

func (r *root) Cms1500(a idArg) *claimView {
	if c, ok := r.s.st.Claims[a.id()]; ok {
		return &claimView{r.s, c}
	}
	return nil
}

type claimsArgs struct {
	Offset     *int32
	PageSize   *int32
	Keywords   *string
	Status     *string
	ClientID   *graphql.ID
	ProviderID *graphql.ID
	SortBy     *string
}

func (r *root) Cms1500s(a claimsArgs) ([]*claimView, error) {
	if a.SortBy != nil {
		return nil, errSortByRemoved
	}
	var out []*claimView
	for _, c := range r.s.st.Claims {
		if a.ClientID != nil && c.PatientID != string(*a.ClientID) {
			continue
		}
		if a.ProviderID != nil && c.ProviderID != string(*a.ProviderID) {
			continue
		}
		if a.Status != nil && *a.Status != "" && !strings.EqualFold(c.Status, *a.Status) {
			continue
		}
		var names []string
		if p := r.s.st.Users[c.PatientID]; p != nil {
			names = append(names, p.FirstName, p.LastName)
		}
		if !matchKeywords(a.Keywords, append(names, c.Status)...) {
			continue
		}
		out = append(out, &claimView{r.s, c})
	}
	sort.Slice(out, func(i, j int) bool { return idLess(out[i].c.ID, out[j].c.ID) })
	return page(out, a.Offset, a.PageSize, nil), nil
}
