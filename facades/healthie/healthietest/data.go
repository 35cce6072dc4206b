package healthietest

import (
	"strconv"
	"strings"
	"time"
)

// The records the simulator keeps, in Go shapes that tests seed and script.
// Empty strings are answered as GraphQL null, as Healthie does for unset
// fields.

// Address is a postal address: a patient's location or an organization's.
type Address struct {
	Line1, Line2, City, State, Zip, Country string
}

// User is a patient (IsPatient) or a provider/staff member.
type User struct {
	ID               string
	FirstName        string
	LastName         string
	LegalName        string
	DOB              string // YYYY-MM-DD
	Gender           string // Male, Female, Other
	Email            string
	PhoneNumber      string
	Archived         bool // archived clients answer active: false
	RecordIdentifier string
	NPI              string // providers
	Qualifications   string // providers: MD, RD, ...
	OrgRole          string // providers: Standard or Support
	IsPatient        bool
	DietitianID      string // a patient's primary provider
	Address          *Address
	CreatedAt        time.Time
	UpdatedAt        time.Time
}

// FullName is first and last name joined.
func (u *User) FullName() string {
	return strings.TrimSpace(u.FirstName + " " + u.LastName)
}

// Organization is the practice.
type Organization struct {
	ID, Name, NPI, TaxID, TaxIDType, PhoneNumber string
	Address                                      *Address
}

// Location is a place of service with its NPI.
type Location struct {
	ID, Name                                string
	Line1, Line2, City, State, Zip, Country string
	NPI                                     string
	UserID                                  string
}

// AppointmentType is a kind of appointment a practice offers.
type AppointmentType struct {
	ID           string
	Name         string
	Length       int // minutes
	ContactTypes []string
	IsGroup      bool
}

// Appointment is a booked 1:1 appointment.
type Appointment struct {
	ID          string
	PatientID   string
	ProviderID  string
	TypeID      string
	ContactType string
	Date        time.Time
	Length      int // minutes; the type's length when zero
	Location    string
	PMStatus    string // "", Occurred, No-Show, Re-Scheduled, Cancelled
	Notes       string
	CreatedAt   time.Time
	UpdatedAt   time.Time
	DeletedAt   time.Time // zero unless (soft) deleted
}

// InsurancePlan is a payer.
type InsurancePlan struct {
	ID, PayerID, PayerName string
	Accepted               bool
}

// Policy is a patient's insurance policy.
type Policy struct {
	ID                 string
	UserID             string
	PlanID             string
	Name               string
	Num                string // member number
	GroupNum           string
	PriorityType       string // Primary, Secondary, Tertiary, Inactive
	HolderFirst        string
	HolderLast         string
	HolderDOB          string
	HolderRelationship string // Self, Spouse, Child, Other
	EffectiveStart     string
	EffectiveEnd       string
	UpdatedAt          time.Time
}

// Code is an ICD or CPT code with its display name.
type Code struct {
	Code, Display string
}

// ClaimLine is one CPT service line of a CMS 1500.
type ClaimLine struct {
	Code        Code
	Units       int
	Fee         string // per unit, dollars
	Modifiers   []string
	Pointers    []int // 1-based positions in the claim's ICD codes
	ServiceDate string
}

// Claim is a CMS 1500.
type Claim struct {
	ID            string
	PatientID     string
	ProviderID    string
	LocationID    string
	Status        string // Not Sent, Sent, Partially Paid, Fully Paid, Denied, ...
	DateOfService string
	TotalCharge   string
	AmountPaid    string
	PolicyIDs     []string
	ICD           []Code
	Lines         []ClaimLine
	CreatedAt     time.Time
	UpdatedAt     time.Time
}

// State is everything the simulator holds. Tests change it inside
// Simulator.Mutate, which holds the simulator's lock.
type State struct {
	Org              Organization
	Users            map[string]*User
	Locations        map[string]*Location
	AppointmentTypes map[string]*AppointmentType
	Appointments     map[string]*Appointment
	Plans            map[string]*InsurancePlan
	Policies         map[string]*Policy
	Claims           map[string]*Claim
	next             int
}

// NewID returns a fresh id, unique across all record kinds, as Healthie's
// numeric ids are.
func (st *State) NewID() string {
	st.next++
	return strconv.Itoa(st.next)
}

func newState() *State {
	return &State{
		Users:            map[string]*User{},
		Locations:        map[string]*Location{},
		AppointmentTypes: map[string]*AppointmentType{},
		Appointments:     map[string]*Appointment{},
		Plans:            map[string]*InsurancePlan{},
		Policies:         map[string]*Policy{},
		Claims:           map[string]*Claim{},
		next:             1000,
	}
}
