package api

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/labels"
)

func TestParseSelectorMatches(t *testing.T) {
	rack0 := labels.Set{"rack": "0", "zone": "a"}
	rack1 := labels.Set{"rack": "1", "zone": "b"}
	rack2 := labels.Set{"rack": "2"}
	rr := labels.Set{"route-reflector": "true", "rack": "0"}
	none := labels.Set{}
	all := []labels.Set{rack0, rack1, rack2, rr, none}

	cases := []struct {
		sel    string
		string string       // the Kubernetes form of the result
		match  []labels.Set // the others in all must not match
	}{
		// The selectors of the seeds.
		{`rack == "0"`, "rack==0", []labels.Set{rack0, rr}},
		{`rack == "1"`, "rack==1", []labels.Set{rack1}},
		{`all()`, "", all},
		{`route-reflector == 'true'`, "route-reflector==true", []labels.Set{rr}},

		// Everything.
		{``, "", all},
		{`   `, "", all},
		{` all( ) `, "", all},
		{`(all())`, "", all},

		// Calico forms.
		{`rack == '0'`, "rack==0", []labels.Set{rack0, rr}},
		{`rack != "0"`, "rack!=0", []labels.Set{rack1, rack2, none}},
		{`has(zone)`, "zone", []labels.Set{rack0, rack1}},
		{`!has(zone)`, "!zone", []labels.Set{rack2, rr, none}},
		{`! has( zone )`, "!zone", []labels.Set{rack2, rr, none}},
		{`rack in {"0","1"}`, "rack in (0,1)", []labels.Set{rack0, rack1, rr}},
		{`rack in { '1' }`, "rack in (1)", []labels.Set{rack1}},
		{`rack not in {"0", '1'}`, "rack notin (0,1)", []labels.Set{rack2, none}},
		{`rack == "0" && zone == "a"`, "rack==0,zone==a", []labels.Set{rack0}},
		{`rack=="0"&&has(zone)`, "rack==0,zone", []labels.Set{rack0}},
		{"rack == \"0\"\n\t&&  zone != 'b'", "rack==0,zone!=b", []labels.Set{rack0, rr}},
		{`(rack == "0") && (has(zone))`, "rack==0,zone", []labels.Set{rack0}},
		{`(rack == "0" && has(zone))`, "rack==0,zone", []labels.Set{rack0}},
		{`all() && rack == "1"`, "rack==1", []labels.Set{rack1}},
		{`!(rack == "0")`, "rack!=0", []labels.Set{rack1, rack2, none}},
		{`!(rack in {"0", "1"})`, "rack notin (0,1)", []labels.Set{rack2, none}},
		{`!rack == "0"`, "rack!=0", []labels.Set{rack1, rack2, none}},
		{`!!has(zone)`, "zone", []labels.Set{rack0, rack1}},
		{"rack\u00a0==\u00a0\"0\"", "rack==0", []labels.Set{rack0, rr}}, // no-break spaces pasted from a page
		{`rhizome.io/route-reflector == "true"`, "rhizome.io/route-reflector==true", nil},

		// Kubernetes forms.
		{`rack=0`, "rack=0", []labels.Set{rack0, rr}},
		{`rack==0`, "rack==0", []labels.Set{rack0, rr}},
		{`rack = 0`, "rack=0", []labels.Set{rack0, rr}},
		{`rack!=0`, "rack!=0", []labels.Set{rack1, rack2, none}},
		{`rack in (0,1)`, "rack in (0,1)", []labels.Set{rack0, rack1, rr}},
		{`rack in (1, 0)`, "rack in (0,1)", []labels.Set{rack0, rack1, rr}},
		{`rack notin (0,1)`, "rack notin (0,1)", []labels.Set{rack2, none}},
		{`zone`, "zone", []labels.Set{rack0, rack1}},
		{`!zone`, "!zone", []labels.Set{rack2, rr, none}},
		{`rack=0,zone`, "rack=0,zone", []labels.Set{rack0}},
		{`rack>0`, "rack>0", []labels.Set{rack1, rack2}},
		{`rack<1`, "rack<1", []labels.Set{rack0, rr}},
		{`zone=`, "zone=", nil},
		{`rack in (0,,1)`, "rack in (,0,1)", []labels.Set{rack0, rack1, rr}},
		{`has=1`, "has=1", nil}, // "has" is an ordinary key unless followed by (
		{`all`, "all", nil},
	}
	for _, tc := range cases {
		t.Run(tc.sel, func(t *testing.T) {
			sel, err := ParseSelector(tc.sel)
			if err != nil {
				t.Fatal(err)
			}
			if got := sel.String(); got != tc.string {
				t.Errorf("String() = %q, want %q", got, tc.string)
			}
			for _, ls := range all {
				want := false
				for _, m := range tc.match {
					if labels.Equals(m, ls) {
						want = true
					}
				}
				if got := sel.Matches(ls); got != want {
					t.Errorf("Matches(%v) = %v, want %v", ls, got, want)
				}
			}
			// The Kubernetes form means the same.
			if k8s, err := labels.Parse(sel.String()); err != nil || k8s.String() != sel.String() {
				t.Errorf("labels.Parse(%q) = %v, %v", sel.String(), k8s, err)
			}
		})
	}
}

func TestParseSelectorEverything(t *testing.T) {
	for _, s := range []string{"", "all()", " ( all() ) "} {
		sel, err := ParseSelector(s)
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		if !sel.Empty() {
			t.Errorf("%q: selector %q is not empty", s, sel)
		}
	}
}

func TestParseSelectorErrors(t *testing.T) {
	cases := []struct {
		sel  string
		want []string // substrings of the error
	}{
		{`a == "1" || b == "2"`, []string{`invalid selector "a == \"1\" || b == \"2\""`, "column 10",
			`"||" is not supported: rhizome selectors are conjunctions`, `k in {"a","b"}`, "separate resources"}},
		{`rack == "0" || rack == "1"`, []string{"column 13", "conjunctions"}},
		{`a | b`, []string{"column 3", `"|" is not an operator`}},
		{`a & b`, []string{"column 3", `"&" is not an operator`}},
		{`name contains "x"`, []string{"column 6", `the Calico operator "contains" is not supported`}},
		{`name starts with "x"`, []string{`the Calico operator "starts with" is not supported`}},
		{`name ends with "x"`, []string{`the Calico operator "ends with" is not supported`}},
		{`global()`, []string{"global() is not supported"}},
		{`!(a == "1" && b == "2")`, []string{"column 1", "!(...) of a compound expression is not supported"}},
		{`!all()`, []string{"!all() selects nothing"}},
		{`!(k > 5)`, []string{"cannot negate k>5"}},
		{`foo(bar)`, []string{"unknown function foo()"}},
		{`rack ==`, nil}, // a missing value is "", as in labels.Parse: valid
		{`rack == "0`, []string{"column 9", "string starting here has no closing \""}},
		{`rack == "0" &&`, []string{"column 15", "expected a label key, has(k) or all(), found end of selector"}},
		{`rack == "0" rack`, []string{"column 13", `unexpected "rack"`}},
		{`rack "0"`, []string{"column 6", `expected an operator`}},
		{`(rack == "0"`, []string{"expected ) to close the ( at column 1"}},
		{`rack == "0")`, []string{"column 12", `unexpected ")"`}},
		{`rack in {}`, []string{"empty set {}"}},
		{`rack in {"a" "b"}`, []string{`expected a value, "," or "}"`}},
		{`rack in ("a"}`, []string{`expected a value, "," or ")"`}},
		{`rack in "a"`, []string{"expected a set of values after in"}},
		{`rack not "a"`, []string{`expected "in" after "not"`}},
		{`has()`, []string{"has() takes a label key"}},
		{`has(a b)`, []string{"expected ) after has(a"}},
		{`all(x)`, []string{"all() takes no argument"}},
		{`Rack Key == "0"`, []string{"expected an operator"}},
		{`-rack == "0"`, []string{`invalid selector "-rack == \"0\""`, "name part must consist of alphanumeric"}},
		{`rack == "a b"`, []string{"a valid label must be an empty string or consist of alphanumeric"}},
		{`rack > a`, []string{"the value must be an integer"}},
		{`rack == =`, []string{`expected a value after ==, found "="`}},
		{`,`, []string{"column 1", "expected a label key"}},
		{strings.Repeat("(", 100) + "a" + strings.Repeat(")", 100), []string{"nested too deeply"}},
		{strings.Repeat("!", 100) + "has(a)", []string{"nested too deeply"}},
	}
	for _, tc := range cases {
		t.Run(tc.sel, func(t *testing.T) {
			_, err := ParseSelector(tc.sel)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want error containing %q, got none", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// Every selector labels.Parse accepts means the same to ParseSelector.
func TestParseSelectorKubernetesCompatible(t *testing.T) {
	for _, s := range []string{
		"x in (foo,,baz),y,z notin ()",
		"a=b,c!=d,e==f",
		"in in (in)",
		"notin notin (notin)",
		"k in ()",
		"k in (,)",
		"k in (a,)",
		"k in (,a)",
		"k==",
		"k!=",
		"k=,l",
		"example.com/role=rr",
		"k>1",
		" k = v ",
		"\tk\n=\rv",
	} {
		t.Run(s, func(t *testing.T) {
			want, err := labels.Parse(s)
			if err != nil {
				t.Fatalf("labels.Parse: %v", err)
			}
			got, err := ParseSelector(s)
			if err != nil {
				t.Fatalf("ParseSelector: %v", err)
			}
			if got.String() != want.String() {
				t.Errorf("got %q, labels.Parse gives %q", got, want)
			}
		})
	}
}
