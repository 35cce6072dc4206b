package authz

import (
	"testing"

	"github.com/p2pserver/p2pserver/fhir/spec"
)

// TestEveryTypeHasARule: every R4 resource type that can hold a patient's
// data has a rule of its own, and a type with no rule is denied, not
// allowed (the types no server stores, and names that are no type).
func TestEveryTypeHasARule(t *testing.T) {
	deniedOK := map[string]bool{"Parameters": true, "OperationOutcome": true}
	counts := map[Rule]int{}
	for _, typ := range spec.R4().ResourceTypes() {
		r := RuleOf(typ)
		counts[r]++
		if r == Denied && !deniedOK[typ] {
			t.Errorf("%s has no access rule", typ)
		}
		if public[typ] && byReference[typ] {
			t.Errorf("%s is listed as reference data and as patient data", typ)
		}
		if _, inCompartment := spec.PatientCompartment()[typ]; inCompartment && (public[typ] || byReference[typ]) {
			t.Errorf("%s is in the Patient compartment and listed elsewhere", typ)
		}
	}
	for _, typ := range []string{"Parameters", "OperationOutcome", "NotAType", ""} {
		if r := RuleOf(typ); r != Denied {
			t.Errorf("%q: rule %s, want denied", typ, r)
		}
	}
	for typ, want := range map[string]Rule{
		"Observation": Compartment, "Patient": Compartment, "Group": Compartment, "Provenance": ProvenanceRule,
		"Binary": SecurityContext, "Bundle": BundleSubject, "Device": DevicePatient, "Subscription": SubscriptionCriteria,
		"MessageHeader": References, "Slot": References, "Practitioner": Public, "Organization": Public,
	} {
		if got := RuleOf(typ); got != want {
			t.Errorf("%s: rule %s, want %s", typ, got, want)
		}
	}
	if counts[Compartment] < 60 || counts[Public] < 50 {
		t.Errorf("rule counts look wrong: %v", counts)
	}
}

// TestPermissionLetters: SMART App Launch 2 spells permissions "cruds" in
// that order (scopes-and-launch-context.html, "Scopes for requesting
// clinical data").
func TestPermissionLetters(t *testing.T) {
	if got := (Create | Read | Update | Delete | Search).String(); got != "cruds" {
		t.Errorf("all letters: %q", got)
	}
	if got := (Read | Search).String(); got != "rs" {
		t.Errorf("read: %q", got)
	}
	var nobody *Principal
	if !nobody.Allows("Observation", PermAll) || nobody.Member() || nobody.Key() != "" {
		t.Error("a nil principal is unrestricted")
	}
	p := &Principal{Patient: "a", Grant: func(typ string, need Perm) bool { return typ == "Observation" && need&^Search == 0 }}
	if !p.CanRead("Observation") || p.Allows("Observation", Read) || p.CanWrite("Observation") || p.CanRead("Patient") {
		t.Error("s alone: searchable, not readable by id, not writable")
	}
	if p.Key() == (&Principal{Patient: "b"}).Key() {
		t.Error("two members share a cursor binding")
	}
}
