package crdtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/rhizome-net/rhizome/api"
)

// crdDir is manifests/crds, relative to this package.
const crdDir = "../../manifests/crds"

// crd is the part of an apiextensions.k8s.io/v1 CustomResourceDefinition the
// tests read. It is declared here rather than taken from
// k8s.io/apiextensions-apiserver to keep that module out of go.mod.
type crd struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Group string `json:"group"`
		Scope string `json:"scope"`
		Names struct {
			Kind       string   `json:"kind"`
			ListKind   string   `json:"listKind"`
			Plural     string   `json:"plural"`
			Singular   string   `json:"singular"`
			ShortNames []string `json:"shortNames"`
		} `json:"names"`
		Versions []crdVersion `json:"versions"`
	} `json:"spec"`
}

type crdVersion struct {
	Name         string         `json:"name"`
	Served       bool           `json:"served"`
	Storage      bool           `json:"storage"`
	Subresources map[string]any `json:"subresources"`
	Columns      []struct {
		Name     string `json:"name"`
		Type     string `json:"type"`
		JSONPath string `json:"jsonPath"`
		Priority int    `json:"priority"`
	} `json:"additionalPrinterColumns"`
	Schema struct {
		OpenAPIV3Schema *schema `json:"openAPIV3Schema"`
	} `json:"schema"`
}

// schema is the part of a structural schema that names fields and types.
type schema struct {
	Type                 string             `json:"type"`
	Properties           map[string]*schema `json:"properties"`
	Items                *schema            `json:"items"`
	AdditionalProperties *schema            `json:"additionalProperties"`
	Required             []string           `json:"required"`
	IntOrString          bool               `json:"x-kubernetes-int-or-string"`
	Enum                 []any              `json:"enum"`
	Default              any                `json:"default"`
}

// crdFile is the file of kind k's CRD.
func crdFile(k api.KindInfo) string {
	return filepath.Join(crdDir, api.Group+"_"+k.CRDPlural+".yaml")
}

// loadCRD reads and decodes kind k's CRD.
func loadCRD(t *testing.T, k api.KindInfo) *crd {
	t.Helper()
	data, err := os.ReadFile(crdFile(k))
	if err != nil {
		t.Fatalf("CRD of %s: %v", k.Kind, err)
	}
	var c crd
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("%s: %v", crdFile(k), err)
	}
	return &c
}

// servedVersion returns the CRD's only version, which must be v1, served and
// stored.
func servedVersion(t *testing.T, c *crd) *crdVersion {
	t.Helper()
	if len(c.Spec.Versions) != 1 {
		t.Fatalf("%s: %d versions, want exactly v1", c.Metadata.Name, len(c.Spec.Versions))
	}
	v := &c.Spec.Versions[0]
	if v.Name != "v1" || !v.Served || !v.Storage {
		t.Fatalf("%s: version %q served=%v storage=%v, want v1 served and stored", c.Metadata.Name, v.Name, v.Served, v.Storage)
	}
	if v.Schema.OpenAPIV3Schema == nil {
		t.Fatalf("%s: no openAPIV3Schema", c.Metadata.Name)
	}
	return v
}

// TestCRDFilesAreTheKinds checks that manifests/crds holds exactly one CRD
// per rhizome kind, named and scoped as the backend will look them up.
func TestCRDFilesAreTheKinds(t *testing.T) {
	want := map[string]bool{}
	for _, k := range api.Kinds() {
		want[filepath.Base(crdFile(k))] = true
		c := loadCRD(t, k)
		if c.APIVersion != "apiextensions.k8s.io/v1" || c.Kind != "CustomResourceDefinition" {
			t.Errorf("%s: %s %s, want apiextensions.k8s.io/v1 CustomResourceDefinition", crdFile(k), c.APIVersion, c.Kind)
		}
		n := c.Spec.Names
		if c.Metadata.Name != k.CRDPlural+"."+api.Group || c.Spec.Group != api.Group || n.Kind != k.CRDKind ||
			n.Plural != k.CRDPlural || n.ListKind != k.CRDKind+"List" || n.Singular != strings.ToLower(k.CRDKind) {
			t.Errorf("%s: name %s group %s kind %s list %s plural %s singular %s, want %s.%s kind %s (api.Kinds)",
				crdFile(k), c.Metadata.Name, c.Spec.Group, n.Kind, n.ListKind, n.Plural, n.Singular, k.CRDPlural, api.Group, k.CRDKind)
		}
		if c.Spec.Scope != "Cluster" {
			t.Errorf("%s: scope %q, want Cluster", crdFile(k), c.Spec.Scope)
		}
		v := servedVersion(t, c)
		_, hasStatus := v.Subresources["status"]
		_, goHasStatus := reflectType(k).FieldByName("Status")
		if hasStatus != goHasStatus {
			t.Errorf("%s: status subresource %v, but the Go type has a Status field: %v", crdFile(k), hasStatus, goHasStatus)
		}
	}
	entries, err := os.ReadDir(crdDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !want[e.Name()] {
			t.Errorf("%s/%s is not the CRD of any kind in api.Kinds", crdDir, e.Name())
		}
	}
	// The per-node record must not take the names of core kinds.
	for _, k := range api.Kinds() {
		c := loadCRD(t, k)
		for _, name := range append([]string{c.Spec.Names.Plural, c.Spec.Names.Singular}, c.Spec.Names.ShortNames...) {
			switch name {
			case "nodes", "node", "no", "pods", "pod", "po", "services", "svc", "namespaces", "ns":
				t.Errorf("%s: name %q shadows a core Kubernetes resource", crdFile(k), name)
			}
		}
	}
}
