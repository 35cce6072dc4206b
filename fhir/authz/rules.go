package authz

import "github.com/p2pserver/p2pserver/fhir/spec"

// Rule is how the policy decides whether a member may see a resource of a
// type (see the package comment).
type Rule uint8

// The rules.
const (
	// Denied: no rule; members never see the type.
	Denied Rule = iota
	// Compartment: the R4 Patient compartment.
	Compartment
	// ProvenanceRule: the compartment, or every target visible.
	ProvenanceRule
	// SecurityContext: Binary, by the resource its securityContext names.
	SecurityContext
	// BundleSubject: document and message Bundles, by their subject.
	BundleSubject
	// DevicePatient: Device, by its patient.
	DevicePatient
	// SubscriptionCriteria: Subscription, by its criteria.
	SubscriptionCriteria
	// References: by the patient-bound resources it refers to.
	References
	// Public: reference data that holds no patient's data.
	Public
)

var ruleNames = map[Rule]string{
	Denied: "denied", Compartment: "patient compartment", ProvenanceRule: "patient compartment or targets",
	SecurityContext: "securityContext", BundleSubject: "document or message subject", DevicePatient: "patient",
	SubscriptionCriteria: "criteria", References: "references", Public: "reference data",
}

// String names the rule.
func (r Rule) String() string { return ruleNames[r] }

// public are the R4 types outside the Patient compartment that hold no
// patient's data: definitions, conformance and knowledge resources, and
// the directory of practitioners, organizations, locations and products
// that patient data refers to.
var public = setOf(
	"ActivityDefinition", "CapabilityStatement", "CatalogEntry", "ChargeItemDefinition", "CodeSystem",
	"CompartmentDefinition", "ConceptMap", "DeviceDefinition", "EffectEvidenceSynthesis", "Endpoint",
	"EventDefinition", "Evidence", "EvidenceVariable", "ExampleScenario", "GraphDefinition",
	"HealthcareService", "ImplementationGuide", "InsurancePlan", "Library", "Location", "Measure",
	"Medication", "MedicationKnowledge", "MedicinalProduct", "MedicinalProductAuthorization",
	"MedicinalProductContraindication", "MedicinalProductIndication", "MedicinalProductIngredient",
	"MedicinalProductInteraction", "MedicinalProductManufactured", "MedicinalProductPackaged",
	"MedicinalProductPharmaceutical", "MedicinalProductUndesirableEffect", "MessageDefinition",
	"NamingSystem", "ObservationDefinition", "OperationDefinition", "Organization",
	"OrganizationAffiliation", "PlanDefinition", "Practitioner", "PractitionerRole", "Questionnaire",
	"ResearchDefinition", "ResearchElementDefinition", "ResearchStudy", "RiskEvidenceSynthesis",
	"SearchParameter", "SpecimenDefinition", "StructureDefinition", "StructureMap", "Substance",
	"SubstanceNucleicAcid", "SubstancePolymer", "SubstanceProtein", "SubstanceReferenceInformation",
	"SubstanceSourceMaterial", "SubstanceSpecification", "TerminologyCapabilities", "TestReport",
	"TestScript", "ValueSet",
)

// byReference are the R4 types outside the Patient compartment that can
// hold a patient's data through what they refer to.
var byReference = setOf(
	"BiologicallyDerivedProduct", // collection.source: the donor
	"Contract",                   // subject
	"DeviceMetric",               // source: a Device
	"EnrollmentResponse",         // request: an EnrollmentRequest
	"GuidanceResponse",           // subject
	"Linkage",                    // item.resource
	"MessageHeader",              // focus
	"PaymentNotice",              // request, response
	"PaymentReconciliation",      // detail.request, detail.response
	"Slot",                       // schedule: a Schedule
	"VerificationResult",         // target
)

func setOf(types ...string) map[string]bool {
	m := make(map[string]bool, len(types))
	for _, t := range types {
		m[t] = true
	}
	return m
}

// RuleOf returns the rule for typ. Parameters and OperationOutcome, and
// any name that is not an R4 resource type, are Denied.
func RuleOf(typ string) Rule {
	switch typ {
	case "Provenance":
		return ProvenanceRule
	case "Binary":
		return SecurityContext
	case "Bundle":
		return BundleSubject
	case "Device":
		return DevicePatient
	case "Subscription":
		return SubscriptionCriteria
	}
	if spec.PatientCompartmentParams(typ) != nil {
		return Compartment
	}
	switch {
	case public[typ]:
		return Public
	case byReference[typ]:
		return References
	}
	return Denied
}

// patientBound reports whether resources of typ can hold a patient's data:
// a reference to one is checked when a member writes.
func patientBound(typ string) bool { return RuleOf(typ) != Public }
