// Command gen writes the trimmed FHIR R4 definitions that package spec
// embeds. It reads the files of testdata/fhir-r4 and writes, into -out:
//
//   - fhir.schema.json: the R4 JSON Schema without descriptions, without the
//     resource types and elements the redistribution (Medplum) added to R4,
//     and without the top-level oneOf/discriminator (ResourceList holds the
//     same list);
//   - choice-elements.json: for every type, its choice elements ("value[x]")
//     and their concrete properties, in schema order. The schema itself does
//     not say which properties form a choice, so this is derived here while
//     the descriptions are still at hand (see choiceGroups);
//   - search-parameters.json and search-parameters-uscore.json: every
//     SearchParameter with only the fields a server needs;
//   - compartmentdefinition-patient.json: the Patient compartment, trimmed;
//   - element-flags.json: for every type and backbone element, which of its
//     properties are in the summary and which are mandatory, from the
//     StructureDefinitions (see elementFlags).
//
// Run it with `make spec` (go run ./fhir/spec/gen -in testdata/fhir-r4 -out fhir/spec/data).
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

func main() {
	in := flag.String("in", "testdata/fhir-r4", "folder holding the FHIR R4 definition files")
	out := flag.String("out", "fhir/spec/data", "folder to write the trimmed files to")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("gen: ")
	if err := run(*in, *out); err != nil {
		log.Fatal(err)
	}
}

func run(in, out string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	schema, err := readOrdered(filepath.Join(in, "fhir.schema.json"))
	if err != nil {
		return err
	}
	trimmed, choices, err := trimSchema(schema)
	if err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(out, "fhir.schema.json"), trimmed); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(out, "choice-elements.json"), choices); err != nil {
		return err
	}
	flags, err := elementFlags(in, trimmed, choices)
	if err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(out, "element-flags.json"), flags); err != nil {
		return err
	}
	for _, name := range []string{"search-parameters.json", "search-parameters-uscore.json"} {
		params, err := trimSearchParameters(filepath.Join(in, name))
		if err != nil {
			return err
		}
		if err := writeJSON(filepath.Join(out, name), params); err != nil {
			return err
		}
	}
	comp, err := trimCompartment(filepath.Join(in, "compartmentdefinition-patient.json"))
	if err != nil {
		return err
	}
	return writeJSON(filepath.Join(out, "compartmentdefinition-patient.json"), comp)
}

// r4ResourceTypes is the list of resource types of FHIR R4 (4.0.1). The
// schema we are given also describes Medplum's own resource types (Project,
// Bot, ...); they are not FHIR and are dropped.
var r4ResourceTypes = strings.Fields(`
Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment
AppointmentResponse AuditEvent Basic Binary BiologicallyDerivedProduct
BodyStructure Bundle CapabilityStatement CarePlan CareTeam CatalogEntry
ChargeItem ChargeItemDefinition Claim ClaimResponse ClinicalImpression
CodeSystem Communication CommunicationRequest CompartmentDefinition
Composition ConceptMap Condition Consent Contract Coverage
CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue Device
DeviceDefinition DeviceMetric DeviceRequest DeviceUseStatement
DiagnosticReport DocumentManifest DocumentReference EffectEvidenceSynthesis
Encounter Endpoint EnrollmentRequest EnrollmentResponse EpisodeOfCare
EventDefinition Evidence EvidenceVariable ExampleScenario
ExplanationOfBenefit FamilyMemberHistory Flag Goal GraphDefinition Group
GuidanceResponse HealthcareService ImagingStudy Immunization
ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide
InsurancePlan Invoice Library Linkage List Location Measure MeasureReport
Media Medication MedicationAdministration MedicationDispense
MedicationKnowledge MedicationRequest MedicationStatement MedicinalProduct
MedicinalProductAuthorization MedicinalProductContraindication
MedicinalProductIndication MedicinalProductIngredient
MedicinalProductInteraction MedicinalProductManufactured
MedicinalProductPackaged MedicinalProductPharmaceutical
MedicinalProductUndesirableEffect MessageDefinition MessageHeader
MolecularSequence NamingSystem NutritionOrder Observation
ObservationDefinition OperationDefinition OperationOutcome Organization
OrganizationAffiliation Parameters Patient PaymentNotice
PaymentReconciliation Person PlanDefinition Practitioner PractitionerRole
Procedure Provenance Questionnaire QuestionnaireResponse RelatedPerson
RequestGroup ResearchDefinition ResearchElementDefinition ResearchStudy
ResearchSubject RiskAssessment RiskEvidenceSynthesis Schedule
SearchParameter ServiceRequest Slot Specimen SpecimenDefinition
StructureDefinition StructureMap Subscription Substance
SubstanceNucleicAcid SubstancePolymer SubstanceProtein
SubstanceReferenceInformation SubstanceSourceMaterial
SubstanceSpecification SupplyDelivery SupplyRequest Task
TerminologyCapabilities TestReport TestScript ValueSet VerificationResult
VisionPrescription`)

// nonR4Elements are elements Medplum added to R4 types (found by comparing
// the schema with the R4 StructureDefinitions); a server speaking R4 must
// reject them. Definitions only they use are dropped with them.
var nonR4Elements = map[string][]string{
	"Meta":                  {"project", "author", "account", "compartment"},
	"Reference":             {"resource"},
	"OperationOutcome":      {"resource", "status"},
	"DeviceDefinition":      {"classification"},
	"HealthcareService":     {"offeredIn"},
	"ObservationDefinition": {"publisher"},
}

// trimSchema returns the trimmed schema and the choice-element table.
func trimSchema(schema *object) (*object, *object, error) {
	defs, ok := schema.get("definitions").(*object)
	if !ok {
		return nil, nil, fmt.Errorf("schema: no definitions")
	}
	for _, t := range r4ResourceTypes {
		if defs.get(t) == nil {
			return nil, nil, fmt.Errorf("schema: R4 resource type %s missing", t)
		}
	}
	for typ, names := range nonR4Elements {
		def, _ := defs.get(typ).(*object)
		props, _ := def.get("properties").(*object)
		for _, n := range names {
			if props.get(n) == nil {
				return nil, nil, fmt.Errorf("schema: %s.%s expected but missing", typ, n)
			}
			props.del(n)
			props.del("_" + n)
		}
	}
	// Keep what the R4 resource types reach; that drops Medplum's resource
	// types and their parts along with definitions only they used.
	resources := map[string]bool{}
	for _, t := range r4ResourceTypes {
		resources[t] = true
	}
	resourceList := &object{}
	var refs []any
	for _, t := range r4ResourceTypes {
		refs = append(refs, &object{keys: []string{"$ref"}, vals: map[string]any{"$ref": "#/definitions/" + t}})
	}
	resourceList.set("oneOf", refs)
	defs.set("ResourceList", resourceList)

	keep := map[string]bool{}
	var visit func(name string) error
	visit = func(name string) error {
		if keep[name] {
			return nil
		}
		def := defs.get(name)
		if def == nil {
			return fmt.Errorf("schema: reference to missing definition %q", name)
		}
		keep[name] = true
		var err error
		walkRefs(def, func(ref string) {
			if err == nil {
				err = visit(strings.TrimPrefix(ref, "#/definitions/"))
			}
		})
		return err
	}
	if err := visit("ResourceList"); err != nil {
		return nil, nil, err
	}
	// Primitive types only used inline by choice elements (oid, uuid) are
	// kept too: the type model names them.
	for _, name := range defs.keys {
		if def, _ := defs.get(name).(*object); def != nil && def.get("properties") == nil && def.get("oneOf") == nil {
			if err := visit(name); err != nil {
				return nil, nil, err
			}
		}
	}
	if n := addCanonicalExtensions(defs, keep); n > 0 {
		log.Printf("schema: added the missing _x sibling of %d canonical elements", n)
	}

	out := &object{}
	out.set("$schema", schema.get("$schema"))
	out.set("id", schema.get("id"))
	outDefs := &object{}
	choices := &object{}
	var dropped []string
	for _, name := range defs.keys {
		if !keep[name] {
			dropped = append(dropped, name)
			continue
		}
		def := defs.get(name).(*object)
		if props, ok := def.get("properties").(*object); ok {
			if g := choiceGroups(props); len(g.keys) > 0 {
				choices.set(name, g)
			}
		}
		outDefs.set(name, stripDescriptions(def))
	}
	out.set("definitions", outDefs)
	log.Printf("schema: %d definitions kept, %d dropped (%s ...)", len(outDefs.keys), len(dropped), strings.Join(dropped[:min(5, len(dropped))], ", "))
	return out, choices, nil
}

// addCanonicalExtensions adds the _x sibling the R4 schema forgets for
// elements of type canonical. canonical is a primitive like uri, and FHIR
// JSON lets any primitive carry an id and extensions in _x (US Core's
// QuestionnaireResponse examples use _questionnaire); the schema generator
// of R4 emitted _x for every primitive but canonical. It returns how many
// were added to the definitions in keep.
func addCanonicalExtensions(defs *object, keep map[string]bool) int {
	n := 0
	for _, name := range defs.keys {
		if !keep[name] {
			continue
		}
		def, _ := defs.get(name).(*object)
		props, _ := def.get("properties").(*object)
		if props == nil {
			continue
		}
		for _, pn := range slices.Clone(props.keys) {
			p, _ := props.get(pn).(*object)
			item, array := p, false
			if items, ok := p.get("items").(*object); ok {
				item, array = items, true
			}
			if item.get("$ref") != "#/definitions/canonical" || props.get("_"+pn) != nil {
				continue
			}
			ext := &object{}
			ext.set("$ref", "#/definitions/Element")
			if array {
				ext = &object{}
				ext.set("items", &object{keys: []string{"$ref"}, vals: map[string]any{"$ref": "#/definitions/Element"}})
				ext.set("type", "array")
			}
			ext.set("description", "Extensions for "+pn)
			props.insertAfter(pn, "_"+pn, ext)
			n++
		}
	}
	return n
}

// choiceTypes lists the FHIR types a choice element may take, by the suffix
// they give a property name (valueDateTime, valueCodeableConcept).
var choiceTypes = strings.Fields(`
base64Binary boolean canonical code date dateTime decimal id instant integer
markdown oid positiveInt string time unsignedInt uri url uuid Address Age
Annotation Attachment CodeableConcept Coding ContactPoint Count Distance
Duration HumanName Identifier Money Period Quantity Range Ratio Reference
SampledData Signature Timing ContactDetail Contributor DataRequirement
Expression ParameterDefinition RelatedArtifact TriggerDefinition
UsageContext Dosage Meta`)

// choiceGroups finds the choice elements among props. A choice element
// value[x] appears in the schema as sibling properties valueString,
// valueQuantity, ... whose suffix names their type. The suffix alone is not
// enough (CarePlan.instantiatesCanonical and instantiatesUri, or
// ClinicalImpression.finding.itemCodeableConcept and itemReference, are
// separate elements), but the schema copies the description of value[x] to
// each of its concrete properties, while separate elements have their own:
// a group is a choice when its members are single-valued, typed as their
// suffix says, share one description, number at least two, and the bare
// name is not itself a property.
func choiceGroups(props *object) *object {
	type member struct{ name, desc string }
	groups := map[string][]member{}
	var order []string
	for _, name := range props.keys {
		p, _ := props.get(name).(*object)
		if p == nil || strings.HasPrefix(name, "_") || p.get("items") != nil {
			continue
		}
		for _, t := range choiceTypes {
			suffix := strings.ToUpper(t[:1]) + t[1:]
			base, ok := strings.CutSuffix(name, suffix)
			if !ok || base == "" {
				continue
			}
			ref, _ := p.get("$ref").(string)
			if ref != "#/definitions/"+t && p.get("pattern") == nil && !(t == "base64Binary" && p.get("type") == "string") {
				continue
			}
			desc, _ := p.get("description").(string)
			if _, seen := groups[base]; !seen {
				order = append(order, base)
			}
			groups[base] = append(groups[base], member{name, desc})
		}
	}
	out := &object{}
	for _, base := range order {
		g := groups[base]
		if len(g) < 2 || props.get(base) != nil {
			continue
		}
		same := true
		for _, m := range g[1:] {
			same = same && m.desc == g[0].desc
		}
		if !same {
			continue
		}
		var names []any
		for _, m := range g {
			names = append(names, m.name)
		}
		out.set(base, names)
	}
	return out
}

func walkRefs(v any, f func(string)) {
	switch x := v.(type) {
	case *object:
		for _, k := range x.keys {
			if k == "$ref" {
				if s, ok := x.vals[k].(string); ok {
					f(s)
				}
				continue
			}
			walkRefs(x.vals[k], f)
		}
	case []any:
		for _, e := range x {
			walkRefs(e, f)
		}
	}
}

// stripDescriptions returns v without "description" members, except where
// "description" is a property name (SearchParameter.description is an
// element of the resource, not documentation).
func stripDescriptions(v any) any {
	switch x := v.(type) {
	case *object:
		out := &object{}
		for _, k := range x.keys {
			if k == "description" {
				if _, isDoc := x.vals[k].(string); isDoc {
					continue
				}
			}
			out.set(k, stripDescriptions(x.vals[k]))
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = stripDescriptions(e)
		}
		return out
	}
	return v
}

// searchParam is the part of a SearchParameter a server needs.
type searchParam struct {
	ID          string      `json:"id"`
	URL         string      `json:"url"`
	Name        string      `json:"name"`
	Code        string      `json:"code"`
	Base        []string    `json:"base"`
	Type        string      `json:"type"`
	Expression  string      `json:"expression,omitempty"`
	Target      []string    `json:"target,omitempty"`
	Modifier    []string    `json:"modifier,omitempty"`
	Comparator  []string    `json:"comparator,omitempty"`
	MultipleOr  *bool       `json:"multipleOr,omitempty"`
	MultipleAnd *bool       `json:"multipleAnd,omitempty"`
	Chain       []string    `json:"chain,omitempty"`
	Component   []component `json:"component,omitempty"`
}

type component struct {
	Definition string `json:"definition"`
	Expression string `json:"expression"`
}

func trimSearchParameters(path string) ([]searchParam, error) {
	var bundle struct {
		Entry []struct {
			Resource json.RawMessage `json:"resource"`
		} `json:"entry"`
	}
	if err := readJSON(path, &bundle); err != nil {
		return nil, err
	}
	out := make([]searchParam, 0, len(bundle.Entry))
	for i, e := range bundle.Entry {
		var kind struct {
			ResourceType string `json:"resourceType"`
		}
		var sp searchParam
		if err := json.Unmarshal(e.Resource, &kind); err != nil {
			return nil, fmt.Errorf("%s: entry %d: %w", path, i, err)
		}
		if kind.ResourceType != "SearchParameter" {
			return nil, fmt.Errorf("%s: entry %d is a %s", path, i, kind.ResourceType)
		}
		if err := json.Unmarshal(e.Resource, &sp); err != nil {
			return nil, fmt.Errorf("%s: entry %d: %w", path, i, err)
		}
		if sp.Code == "" || sp.Type == "" || len(sp.Base) == 0 {
			return nil, fmt.Errorf("%s: entry %d (%s) lacks code, type or base", path, i, sp.ID)
		}
		out = append(out, sp)
	}
	log.Printf("%s: %d search parameters", filepath.Base(path), len(out))
	return out, nil
}

type compartment struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	URL          string `json:"url"`
	Code         string `json:"code"`
	Resource     []struct {
		Code  string   `json:"code"`
		Param []string `json:"param,omitempty"`
	} `json:"resource"`
}

func trimCompartment(path string) (*compartment, error) {
	var c compartment
	if err := readJSON(path, &c); err != nil {
		return nil, err
	}
	if c.ResourceType != "CompartmentDefinition" || c.Code != "Patient" {
		return nil, fmt.Errorf("%s: not the Patient CompartmentDefinition", path)
	}
	return &c, nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	log.Printf("wrote %s (%d bytes)", path, buf.Len())
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// object is a JSON object that remembers the order of its members, so the
// trimmed schema lists properties as the specification does.
type object struct {
	keys []string
	vals map[string]any
}

func (o *object) get(k string) any {
	if o == nil {
		return nil
	}
	return o.vals[k]
}

func (o *object) set(k string, v any) {
	if o.vals == nil {
		o.vals = map[string]any{}
	}
	if _, ok := o.vals[k]; !ok {
		o.keys = append(o.keys, k)
	}
	o.vals[k] = v
}

// insertAfter adds member k with value v right after member after.
func (o *object) insertAfter(after, k string, v any) {
	i := slices.Index(o.keys, after)
	o.set(k, v)
	o.keys = slices.Insert(o.keys[:len(o.keys)-1], i+1, k)
}

func (o *object) del(k string) {
	if _, ok := o.vals[k]; !ok {
		return
	}
	delete(o.vals, k)
	o.keys = slices.DeleteFunc(o.keys, func(s string) bool { return s == k })
}

// MarshalJSON writes the members in order.
func (o *object) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			buf.WriteByte(',')
		}
		kb, err := marshalNoEscape(k)
		if err != nil {
			return nil, err
		}
		buf.Write(kb)
		buf.WriteByte(':')
		vb, err := marshalNoEscape(o.vals[k])
		if err != nil {
			return nil, err
		}
		buf.Write(vb)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

func marshalNoEscape(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func readOrdered(path string) (*object, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	dec.UseNumber()
	v, err := decodeOrdered(dec)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	o, ok := v.(*object)
	if !ok {
		return nil, fmt.Errorf("%s: not a JSON object", path)
	}
	return o, nil
}

func decodeOrdered(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			o := &object{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				v, err := decodeOrdered(dec)
				if err != nil {
					return nil, err
				}
				o.set(kt.(string), v)
			}
			_, err := dec.Token()
			return o, err
		case '[':
			a := []any{}
			for dec.More() {
				v, err := decodeOrdered(dec)
				if err != nil {
					return nil, err
				}
				a = append(a, v)
			}
			_, err := dec.Token()
			return a, err
		}
		return nil, fmt.Errorf("unexpected %v", t)
	}
	return tok, nil
}
