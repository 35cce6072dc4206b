package healthie

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/vektah/gqlparser/v2/ast"
	"github.com/vektah/gqlparser/v2/parser"
)

// TestOperationsSendNoDeprecatedArgument: no operation the facade sends
// uses an argument Healthie flags with @deprecated (its deprecation policy:
// deprecated features are flagged with the GraphQL @deprecated directive
// and removed later; the string sort_by arguments, deprecated on November
// 6, 2023, were announced for removal on August 6, 2024, in favour of the
// enum order_by arguments). Each operation is a row.
func TestOperationsSendNoDeprecatedArgument(t *testing.T) {
	schemaText, err := os.ReadFile(filepath.Join("healthietest", "schema.graphql"))
	if err != nil {
		t.Fatal(err)
	}
	sd, gerr := parser.ParseSchema(&ast.Source{Name: "schema.graphql", Input: string(schemaText)})
	if gerr != nil {
		t.Fatal(gerr)
	}
	types := map[string]*ast.Definition{}
	for _, d := range sd.Definitions {
		types[d.Name] = d
	}
	opsText, err := os.ReadFile("operations.graphql")
	if err != nil {
		t.Fatal(err)
	}
	doc, gerr := parser.ParseQuery(&ast.Source{Name: "operations.graphql", Input: string(opsText)})
	if gerr != nil {
		t.Fatal(gerr)
	}
	// The schema does flag sort_by, so the walk below can fail.
	if d := types["Query"].Fields.ForName("users").Arguments.ForName("sort_by"); d == nil || d.Directives.ForName("deprecated") == nil {
		t.Fatal("the schema no longer flags users(sort_by) as deprecated")
	}
	var walk func(t *testing.T, typ string, set ast.SelectionSet)
	walk = func(t *testing.T, typ string, set ast.SelectionSet) {
		for _, sel := range set {
			switch s := sel.(type) {
			case *ast.Field:
				if s.Name == "__typename" {
					continue
				}
				def := types[typ].Fields.ForName(s.Name)
				if def == nil {
					t.Errorf("%s has no field %s", typ, s.Name)
					continue
				}
				for _, a := range s.Arguments {
					if ad := def.Arguments.ForName(a.Name); ad == nil {
						t.Errorf("%s.%s has no argument %s", typ, s.Name, a.Name)
					} else if dep := ad.Directives.ForName("deprecated"); dep != nil {
						t.Errorf("sends %s.%s(%s:), which Healthie deprecated: %s", typ, s.Name, a.Name, dep.Arguments.ForName("reason").Value.Raw)
					}
				}
				walk(t, def.Type.Name(), s.SelectionSet)
			case *ast.InlineFragment:
				walk(t, s.TypeCondition, s.SelectionSet)
			case *ast.FragmentSpread:
				f := doc.Fragments.ForName(s.Name)
				walk(t, f.TypeCondition, f.SelectionSet)
			}
		}
	}
	if len(doc.Operations) < 10 {
		t.Fatalf("only %d operations read", len(doc.Operations))
	}
	for _, op := range doc.Operations {
		root := "Query"
		if op.Operation == ast.Mutation {
			root = "Mutation"
		}
		t.Run(op.Name, func(t *testing.T) { walk(t, root, op.SelectionSet) })
	}
}
