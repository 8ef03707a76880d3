package api

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/labels"
)

// FuzzDecodeValidate feeds arbitrary input through what `apply` does:
// Decode, SetDefaults, Validate. Nothing may panic; defaulting must be
// idempotent; every valid object must survive MarshalJSON and MarshalYAML
// followed by Decode unchanged, and validate again.
func FuzzDecodeValidate(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*", "*.yaml"))
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, obj := range fullObjects() {
		y, err := MarshalYAML(obj)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(y)
		j, _ := MarshalJSON(obj)
		f.Add(j)
	}
	f.Add([]byte(`{"kind":"List","items":[{"apiVersion":"rhizome.io/v1","kind":"Node","metadata":{"name":"a"}}]}`))
	f.Add([]byte("apiVersion: rhizome.io/v1\nkind: IPReservation\nmetadata: {name: r}\nspec: {reservedCIDRs: [10.0.0.0/28, 10.0.0.5-10.0.0.9]}\n"))
	f.Add([]byte("apiVersion: rhizome.io/v1\nkind: BGPPeer\nmetadata: {name: p}\nspec: {peerIP: '[fd00::1]:179', asNumber: '1.10'}\n"))
	f.Add([]byte("a: &a [*a, *a]\n---\n- x\n---\n{\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := Decode(data)
		if err != nil {
			if objs != nil {
				t.Fatalf("objects returned with error %v", err)
			}
			return
		}
		for _, obj := range objs {
			SetDefaults(obj)
			once, err := MarshalJSON(obj)
			if err != nil {
				t.Fatalf("MarshalJSON of a decoded object: %v", err)
			}
			SetDefaults(obj)
			if twice, _ := MarshalJSON(obj); !bytes.Equal(once, twice) {
				t.Fatalf("SetDefaults not idempotent:\n%s\n%s", once, twice)
			}
			if err := Validate(obj); err != nil {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("Validate error %v does not match ErrInvalid", err)
				}
				continue
			}
			checkRoundTrip(t, obj, once, "JSON", once)
			y, err := MarshalYAML(obj)
			if err != nil {
				t.Fatalf("MarshalYAML: %v", err)
			}
			checkRoundTrip(t, obj, once, "YAML", y)
			if err := ValidateUpdate(obj, obj); err != nil {
				t.Fatalf("ValidateUpdate(obj, obj): %v", err)
			}
		}
	})
}

func checkRoundTrip(t *testing.T, obj Object, want []byte, form string, data []byte) {
	t.Helper()
	back, err := Decode(data)
	if err != nil {
		t.Fatalf("%s round trip of %s: %v\n%s", form, want, err, data)
	}
	if len(back) != 1 {
		t.Fatalf("%s round trip gave %d objects", form, len(back))
	}
	got, err := MarshalJSON(back[0])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s round trip changed the object:\n%s\n%s", form, want, got)
	}
	if err := Validate(back[0]); err != nil {
		t.Fatalf("%s round trip no longer validates: %v", form, err)
	}
}

// FuzzParseSelector checks that ParseSelector never panics, that what it
// accepts prints as a Kubernetes selector meaning the same, and that it
// accepts, with the same meaning, everything labels.Parse accepts.
func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{
		`rack == "0"`, `rack == "1"`, `all()`, `route-reflector == 'true'`,
		`has(zone) && !has(spot)`, `rack in {"0", '1'}`, `rack not in {"2"}`, `(a == "b") && (c != 'd')`,
		`!(a in {"x"})`, `a == "1" || b == "2"`, `name contains "x"`, `global()`,
		`rack=0`, `rack in (0,1)`, `!k`, `k`, `k!=v`, `x in (foo,,baz),y,z notin ()`, `k>5`, `k==`,
		"rack\u00a0==\u00a0\"0\"", `((((a))))`, `!!!has(a)`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParseSelector(s)
		if err == nil {
			if err := checkKubernetesForm(sel); err != nil {
				t.Fatalf("ParseSelector(%q): %v", s, err)
			}
		} else if !strings.Contains(err.Error(), "invalid selector") {
			t.Fatalf("error without context: %v", err)
		}
		// labels.Parse stops at a NUL byte as if the selector ended there
		// ("k\x00garbage" selects k); ParseSelector refuses such input.
		if strings.ContainsRune(s, 0) {
			return
		}
		k8s, kerr := labels.Parse(s)
		if kerr != nil {
			return
		}
		if err != nil {
			t.Fatalf("labels.Parse accepts %q, ParseSelector does not: %v", s, err)
		}
		if sel.String() != k8s.String() {
			t.Fatalf("%q: ParseSelector gives %q, labels.Parse %q", s, sel, k8s)
		}
	})
}

// checkKubernetesForm checks that sel.String() parses back, with both
// parsers, to the same selector.
func checkKubernetesForm(sel labels.Selector) error {
	again, err := ParseSelector(sel.String())
	if err != nil {
		return err
	}
	k8s, err := labels.Parse(sel.String())
	if err != nil {
		return err
	}
	if again.String() != sel.String() || k8s.String() != sel.String() {
		return errors.New("String() does not parse back to itself: " + sel.String())
	}
	return nil
}
