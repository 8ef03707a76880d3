package archtest

import (
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/rhizome-net/rhizome"

type listedPackage struct {
	ImportPath   string
	Dir          string
	GoFiles      []string
	TestGoFiles  []string
	XTestGoFiles []string
	Imports      []string
	TestImports  []string
	XTestImports []string
}

// packages lists every package of the module with its files and imports.
func packages(t *testing.T) []listedPackage {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", module+"/...")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	var pkgs []listedPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p listedPackage
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages; expected the whole module", len(pkgs))
	}
	return pkgs
}

func inDatastore(path string) bool {
	return path == module+"/datastore" || strings.HasPrefix(path, module+"/datastore/")
}

// No package outside datastore (and its subpackages and their tests)
// imports etcd: a second backend can sit under datastore's interfaces.
func TestOnlyDatastoreImportsEtcd(t *testing.T) {
	for _, p := range packages(t) {
		if inDatastore(p.ImportPath) {
			continue
		}
		for _, imports := range [][]string{p.Imports, p.TestImports, p.XTestImports} {
			for _, imp := range imports {
				if !strings.HasPrefix(imp, "go.etcd.io/") {
					continue
				}
				t.Errorf("%s imports %s: only package datastore and its subpackages may use etcd", p.ImportPath, imp)
			}
		}
	}
}

// ipamRecordTypes are ipam's stored records: only ipam encodes and decodes
// them (other packages may build a Block to import it).
var ipamRecordTypes = map[string]bool{"Affinity": true, "Handle": true, "AffinityState": true}

// No package but ipam knows where IPAM keeps its records or decodes them:
// no other file spells an IPAM key (the key names are unexported), or refers
// to an IPAM record type while importing encoding/json.
func TestOnlyIPAMKnowsItsFormat(t *testing.T) {
	fset := token.NewFileSet()
	for _, p := range packages(t) {
		if p.ImportPath == module+"/ipam" || p.ImportPath == module+"/internal/archtest" {
			continue
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		for _, files := range [][]string{p.GoFiles, p.TestGoFiles, p.XTestGoFiles} {
			for _, name := range files {
				relFile := filepath.ToSlash(filepath.Join(rel, name))
				f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, parser.SkipObjectResolution)
				if err != nil {
					t.Fatal(err)
				}
				checkIPAMFormat(t, fset, relFile, f)
			}
		}
	}
}

func checkIPAMFormat(t *testing.T, fset *token.FileSet, relFile string, f *ast.File) {
	t.Helper()
	ipamName, usesJSON := "", false
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		switch path {
		case module + "/ipam":
			ipamName = "ipam"
			if imp.Name != nil {
				ipamName = imp.Name.Name
			}
		case "encoding/json":
			usesJSON = true
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.BasicLit:
			if n.Kind == token.STRING && strings.Contains(n.Value, "/rhizome/v1/ipam/") {
				t.Errorf("%s: %s spells an IPAM key: use a function of package ipam", relFile, fset.Position(n.Pos()))
			}
		case *ast.SelectorExpr:
			x, ok := n.X.(*ast.Ident)
			if !ok || ipamName == "" || x.Name != ipamName {
				break
			}
			if usesJSON && ipamRecordTypes[n.Sel.Name] {
				t.Errorf("%s: %s refers to ipam.%s and imports encoding/json: only ipam encodes its records",
					relFile, fset.Position(n.Pos()), n.Sel.Name)
			}
		}
		return true
	})
}
