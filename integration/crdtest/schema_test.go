package crdtest

import (
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/rhizome-net/rhizome/api"
)

var asNumberType = reflect.TypeFor[api.ASNumber]()

// reflectType is the struct type of kind k (api.IPPool, ...).
func reflectType(k api.KindInfo) reflect.Type {
	return reflect.TypeOf(k.New()).Elem()
}

// jsonField is one field of a Go struct as encoding/json sees it.
type jsonField struct {
	name      string
	omitempty bool
	typ       reflect.Type
}

// jsonFields lists the JSON fields of struct type t, with the fields of
// inlined (embedded or `json:",inline"`) structs in their place.
func jsonFields(t reflect.Type) []jsonField {
	var out []jsonField
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		inline := strings.Contains(","+opts+",", ",inline,")
		if f.Anonymous && (name == "" || inline) && f.Type.Kind() == reflect.Struct {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		if name == "" {
			name = f.Name
		}
		out = append(out, jsonField{name: name, omitempty: strings.Contains(","+opts+",", ",omitempty,"), typ: f.Type})
	}
	return out
}

// reporter is the part of *testing.T compareSchema uses.
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

// recorder is a reporter that keeps the errors, for testing compareSchema.
type recorder struct{ errs []string }

func (*recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// compareSchema reports every difference between Go type t and schema s at
// path: a field of one that the other lacks, a JSON type that does not
// match, and a field the schema requires that the Go type may leave out.
func compareSchema(t reporter, path string, typ reflect.Type, s *schema) {
	t.Helper()
	if s == nil {
		t.Errorf("%s: no schema for Go type %s", path, typ)
		return
	}
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if typ == asNumberType {
		// api.ASNumber reads a number, a decimal string or asdot ("1.10").
		if !s.IntOrString || s.Type != "" {
			t.Errorf("%s: an api.ASNumber needs x-kubernetes-int-or-string and no type, got type %q int-or-string %v", path, s.Type, s.IntOrString)
		}
		return
	}
	want := ""
	switch typ.Kind() {
	case reflect.String:
		want = "string"
	case reflect.Bool:
		want = "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		want = "integer"
	case reflect.Slice:
		want = "array"
	case reflect.Map, reflect.Struct:
		want = "object"
	default:
		t.Errorf("%s: Go type %s has no JSON schema type in this test: extend compareSchema", path, typ)
		return
	}
	if s.Type != want {
		t.Errorf("%s: schema type %q, Go type %s wants %q", path, s.Type, typ, want)
		return
	}
	switch typ.Kind() {
	case reflect.Slice:
		compareSchema(t, path+"[]", typ.Elem(), s.Items)
	case reflect.Map:
		compareSchema(t, path+"{}", typ.Elem(), s.AdditionalProperties)
	case reflect.Struct:
		fields := jsonFields(typ)
		inGo := map[string]jsonField{}
		for _, f := range fields {
			inGo[f.name] = f
			child := path + "." + f.name
			if path == "" {
				child = f.name
			}
			fs, ok := s.Properties[f.name]
			if !ok {
				t.Errorf("%s: field of Go type %s is missing from the CRD schema", child, typ)
				continue
			}
			if path == "" && f.name == "metadata" {
				// The API server owns ObjectMeta's schema; a CRD may only
				// restrict the name.
				if fs.Type != "object" {
					t.Errorf("metadata: schema type %q, want object", fs.Type)
				}
				for n, ps := range fs.Properties {
					if n != "name" || ps.Type != "string" {
						t.Errorf("metadata.%s: a CRD may only restrict metadata.name, a string", n)
					}
				}
				continue
			}
			compareSchema(t, child, f.typ, fs)
		}
		names := make([]string, 0, len(s.Properties))
		for n := range s.Properties {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			if _, ok := inGo[n]; !ok {
				t.Errorf("%s.%s: in the CRD schema but not a field of Go type %s", path, n, typ)
			}
		}
		for _, r := range s.Required {
			f, ok := inGo[r]
			switch {
			case !ok:
				t.Errorf("%s: requires %q, which Go type %s lacks", path, r, typ)
			case f.omitempty:
				t.Errorf("%s: requires %q, which Go type %s leaves out when empty (omitempty): rhizome's own writes would be refused", path, r, typ)
			}
		}
	}
}

// TestSchemasMatchGoTypes walks every kind's Go type by reflection and its
// CRD's schema together: a field added to api/types.go without the CRD, or a
// schema field the type lacks, fails here.
func TestSchemasMatchGoTypes(t *testing.T) {
	for _, k := range api.Kinds() {
		t.Run(k.Kind, func(t *testing.T) {
			v := servedVersion(t, loadCRD(t, k))
			compareSchema(t, "", reflectType(k), v.Schema.OpenAPIV3Schema)
		})
	}
}

// TestCompareSchemaFindsDrift shows that compareSchema notices each kind of
// drift it is there to catch.
func TestCompareSchemaFindsDrift(t *testing.T) {
	type inner struct {
		A string `json:"a"`
	}
	type goType struct {
		api.TypeMeta `json:",inline"`
		Name         string        `json:"name"`
		N            int           `json:"n,omitempty"`
		AS           *api.ASNumber `json:"as,omitempty"`
		List         []inner       `json:"list,omitempty"`
	}
	str := &schema{Type: "string"}
	good := func() *schema {
		return &schema{Type: "object", Required: []string{"name"}, Properties: map[string]*schema{
			"apiVersion": str, "kind": str, "name": str,
			"n":    {Type: "integer"},
			"as":   {IntOrString: true},
			"list": {Type: "array", Items: &schema{Type: "object", Properties: map[string]*schema{"a": str}}},
		}}
	}
	for _, tc := range []struct {
		name   string
		mutate func(s *schema)
		want   string // in the one error reported; "" for none
	}{
		{"matching", func(*schema) {}, ""},
		{"field missing from schema", func(s *schema) { delete(s.Properties, "n") }, "n: field of Go type"},
		{"field the type lacks", func(s *schema) { s.Properties["extra"] = str }, ".extra: in the CRD schema but not"},
		{"nested field missing", func(s *schema) { s.Properties["list"].Items.Properties = map[string]*schema{} }, "list[].a: field of Go type"},
		{"wrong type", func(s *schema) { s.Properties["n"] = str }, `n: schema type "string"`},
		{"AS number as integer", func(s *schema) { s.Properties["as"] = &schema{Type: "integer"} }, "x-kubernetes-int-or-string"},
		{"required but omitempty", func(s *schema) { s.Required = append(s.Required, "n") }, "omitempty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := good()
			tc.mutate(s)
			rec := &recorder{}
			compareSchema(rec, "", reflect.TypeFor[goType](), s)
			switch {
			case tc.want == "" && len(rec.errs) > 0:
				t.Errorf("unexpected errors: %q", rec.errs)
			case tc.want != "" && (len(rec.errs) != 1 || !strings.Contains(rec.errs[0], tc.want)):
				t.Errorf("errors %q, want exactly one containing %q", rec.errs, tc.want)
			}
		})
	}
}

// TestPrinterColumnsExist checks that every printer column reads a field
// the schema has, so that no column is empty because of a typo.
func TestPrinterColumnsExist(t *testing.T) {
	for _, k := range api.Kinds() {
		v := servedVersion(t, loadCRD(t, k))
		for _, col := range v.Columns {
			s := v.Schema.OpenAPIV3Schema
			for _, p := range strings.Split(strings.TrimPrefix(col.JSONPath, "."), ".") {
				if s != nil {
					s = s.Properties[p]
				}
			}
			if s == nil {
				t.Errorf("%s: column %s reads %s, which is not in the schema", k.CRDKind, col.Name, col.JSONPath)
			}
			if !slices.Contains([]string{"string", "integer", "boolean", "number", "date"}, col.Type) {
				t.Errorf("%s: column %s has type %q", k.CRDKind, col.Name, col.Type)
			}
		}
	}
}
