package cnisvc

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseAnnotations(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pod    map[string]string
		ns     map[string]string
		want   Addressing
		errHas []string
	}{
		{name: "none", want: Addressing{}},
		{name: "pod pools", pod: map[string]string{AnnotationIPv4Pools: `["a","b"]`}, want: Addressing{IPv4Pools: []string{"a", "b"}}},
		{name: "namespace pools", ns: map[string]string{AnnotationIPv6Pools: `["v6"]`}, want: Addressing{IPv6Pools: []string{"v6"}}},
		{name: "pod wins", pod: map[string]string{AnnotationIPv4Pools: `["p"]`}, ns: map[string]string{AnnotationIPv4Pools: `["n"]`, AnnotationIPv6Pools: `["n6"]`},
			want: Addressing{IPv4Pools: []string{"p"}, IPv6Pools: []string{"n6"}}},
		{name: "fixed", pod: map[string]string{AnnotationIPAddrs: `["10.0.0.5","fd00::5"]`}, ns: map[string]string{AnnotationIPv4Pools: `["n"]`},
			want: Addressing{Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::5")}}},
		{name: "not json", pod: map[string]string{AnnotationIPv4Pools: `pool-a`}, errHas: []string{AnnotationIPv4Pools, "on the pod", "invalid character"}},
		{name: "bad ns", ns: map[string]string{AnnotationIPv6Pools: `[1]`}, errHas: []string{AnnotationIPv6Pools, "on the namespace", "cannot unmarshal number"}},
		{name: "empty list", pod: map[string]string{AnnotationIPv4Pools: `[]`}, errHas: []string{"names no pool"}},
		{name: "dup pool", pod: map[string]string{AnnotationIPv4Pools: `["a","a"]`}, errHas: []string{`"a" is listed twice`}},
		{name: "bad addr", pod: map[string]string{AnnotationIPAddrs: `["10.0.0.300"]`}, errHas: []string{AnnotationIPAddrs, "10.0.0.300"}},
		{name: "two v4", pod: map[string]string{AnnotationIPAddrs: `["10.0.0.1","10.0.0.2"]`}, errHas: []string{"at most one IPv4"}},
		{name: "zone", pod: map[string]string{AnnotationIPAddrs: `["fe80::1%eth0"]`}, errHas: []string{"without zone"}},
		{name: "fixed and pools", pod: map[string]string{AnnotationIPAddrs: `["10.0.0.1"]`, AnnotationIPv4Pools: `["a"]`}, errHas: []string{"cannot be combined"}},
		{name: "ns fixed ignored", ns: map[string]string{AnnotationIPAddrs: `["10.0.0.1"]`}, want: Addressing{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAnnotations(tc.pod, tc.ns)
			if len(tc.errHas) > 0 {
				if err == nil {
					t.Fatalf("no error, got %+v", got)
				}
				for _, p := range tc.errHas {
					if !strings.Contains(err.Error(), p) {
						t.Errorf("error %q does not mention %q", err, p)
					}
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// FuzzParseAnnotations checks that any annotation value either fails with
// an error naming the annotation, or yields names and addresses that
// survive a round trip.
func FuzzParseAnnotations(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/annotations/*.json")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b), string(b), string(b))
	}
	f.Fuzz(func(t *testing.T, pools, nsPools, addrs string) {
		pod := map[string]string{AnnotationIPv4Pools: pools, AnnotationIPAddrs: addrs}
		if pools == "" {
			delete(pod, AnnotationIPv4Pools)
		}
		ns := map[string]string{AnnotationIPv6Pools: nsPools}
		a, err := ParseAnnotations(pod, ns)
		if err != nil {
			if !strings.Contains(err.Error(), "rhizome.io/") {
				t.Fatalf("error %q does not name the annotation", err)
			}
			return
		}
		if len(a.Addrs) == 0 {
			t.Fatalf("ip-addrs %q parsed to no address without error", addrs)
		}
		for _, x := range a.Addrs {
			if y, err := netip.ParseAddr(x.String()); err != nil || y != x {
				t.Fatalf("address %v does not round-trip", x)
			}
		}
		if _, err := json.Marshal(a); err != nil {
			t.Fatal(err)
		}
	})
}
