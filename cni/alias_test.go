package cni

import "testing"

func TestParseOwnerAliasRoundTrip(t *testing.T) {
	for _, c := range []struct{ network, container, ifName string }{
		{"k8s-pod-network", "0123456789abcdef", "eth0"},
		{"net.with.dots", "c1", "net1"},
	} {
		n, cid, ifn, ok := ParseOwnerAlias(ownerAlias(c.network, c.container, c.ifName))
		if !ok || n != c.network || cid != c.container || ifn != c.ifName {
			t.Errorf("ParseOwnerAlias(ownerAlias(%q, %q, %q)) = %q, %q, %q, %v", c.network, c.container, c.ifName, n, cid, ifn, ok)
		}
	}
	for _, bad := range []string{"", "calico:x:y:z", "rhizome:", "rhizome:a:b", "rhizome:a:b:", "rhizome::b:c", "rhizome:a::c"} {
		if n, cid, ifn, ok := ParseOwnerAlias(bad); ok {
			t.Errorf("ParseOwnerAlias(%q) = %q, %q, %q, true; want not ok", bad, n, cid, ifn)
		}
	}
}
