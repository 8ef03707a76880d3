package api

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestASNumberUnmarshalJSON(t *testing.T) {
	cases := []struct {
		in   string
		want ASNumber
		err  string // substring; "" = valid
	}{
		{`64512`, 64512, ""},
		{`0`, 0, ""}, // decodes; Validate rejects it
		{`4294967295`, 4294967295, ""},
		{`"64514"`, 64514, ""},
		{`" 64514 "`, 64514, ""},
		{`"1.10"`, 65546, ""},
		{`"0.65535"`, 65535, ""},
		{`"65535.65535"`, 4294967295, ""},
		{`4294967296`, 0, "AS number 4294967296 out of range 1-4294967295"},
		{`-1`, 0, "AS number -1 out of range"},
		{`"-1"`, 0, "out of range"},
		{`1.10`, 0, `AS number 1.10 is not a whole number: write asdot notation as a quoted string ("1.10")`},
		{`6.4512e4`, 0, "is not a whole number"},
		{`"abc"`, 0, `AS number "abc" is not a number`},
		{`""`, 0, "AS number is empty"},
		{`"1.65536"`, 0, `AS number "1.65536" is not valid asdot notation`},
		{`"1."`, 0, "is not valid asdot notation"},
		{`"1.2.3"`, 0, "is not valid asdot notation"},
		{`"+5"`, 0, "is not a number"},
		{`true`, 0, "must be a number"},
		{`{}`, 0, "must be a number"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			var a ASNumber
			err := json.Unmarshal([]byte(tc.in), &a)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v (%d), want error containing %q", err, a, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if a != tc.want {
				t.Errorf("got %d, want %d", a, tc.want)
			}
		})
	}
}

func TestASNumberNull(t *testing.T) {
	var s struct {
		AS *ASNumber `json:"asNumber"`
	}
	if err := json.Unmarshal([]byte(`{"asNumber": null}`), &s); err != nil || s.AS != nil {
		t.Errorf("null: got %v, %v", s.AS, err)
	}
	a := ASNumber(7)
	if err := a.UnmarshalJSON([]byte("null")); err != nil || a != 7 {
		t.Errorf("UnmarshalJSON(null) = %v, value %d", err, a)
	}
}

func TestASNumberMarshalJSON(t *testing.T) {
	spec := BGPConfigurationSpec{ASNumber: NewASNumber(65546)}
	out, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"asNumber":65546}`; string(out) != want {
		t.Errorf("got %s, want %s", out, want)
	}
	if got := ASNumber(4294967295).String(); got != "4294967295" {
		t.Errorf("String() = %q", got)
	}
	if out, _ := json.Marshal(BGPConfigurationSpec{}); string(out) != `{}` {
		t.Errorf("nil AS number: %s", out)
	}
}

// A Calico user's patch writes the AS number as a string.
func TestASNumberInPatchedNode(t *testing.T) {
	var n Node
	if err := DecodeInto([]byte(`{"metadata":{"name":"node-1"},"spec":{"bgp":{"asNumber":"64514"}}}`), &n); err != nil {
		t.Fatal(err)
	}
	if n.Spec.BGP == nil || n.Spec.BGP.ASNumber == nil || *n.Spec.BGP.ASNumber != 64514 {
		t.Fatalf("got %+v", n.Spec.BGP)
	}
	out, err := MarshalJSON(&n)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"asNumber":64514`) {
		t.Errorf("marshalled %s", out)
	}
	err = DecodeInto([]byte(`{"metadata":{"name":"node-1"},"spec":{"bgp":{"asNumber":"645x"}}}`), &n)
	if err == nil || !strings.Contains(err.Error(), `Node "node-1": spec.bgp.asNumber: AS number "645x" is not a number`) {
		t.Errorf("got %v", err)
	}
}
