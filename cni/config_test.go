package cni

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseNetConf(t *testing.T) {
	for _, tc := range []struct {
		name   string
		in     string
		code   uint
		errHas string
		check  func(*NetConf) bool
	}{
		{name: "minimal", in: `{"cniVersion":"1.1.0","name":"k8s-pod-network","type":"rhizome-cni"}`,
			check: func(c *NetConf) bool { return c.wantIPv4() && !c.AssignIPv6 && c.MTU == 0 && c.Socket == "" }},
		{name: "full", in: `{"cniVersion":"1.1.0","name":"n","type":"rhizome-cni","mtu":1440,"socket":"/run/x.sock","ipv4Pools":["a"],"assignIPv6":true,"ipv6Pools":["b"]}`,
			check: func(c *NetConf) bool { return c.MTU == 1440 && c.IPv4Pools[0] == "a" && c.AssignIPv6 }},
		{name: "not json", in: `{"name":`, code: types.ErrDecodingFailure, errHas: "decode the network configuration"},
		{name: "no name", in: `{"type":"rhizome-cni"}`, code: types.ErrInvalidNetworkConfig, errHas: "network name"},
		{name: "bad name", in: `{"name":"a b"}`, code: types.ErrInvalidNetworkConfig, errHas: `network name "a b"`},
		{name: "mtu", in: `{"name":"n","mtu":100}`, code: types.ErrInvalidNetworkConfig, errHas: "mtu 100"},
		{name: "socket", in: `{"name":"n","socket":"rel.sock"}`, code: types.ErrInvalidNetworkConfig, errHas: "absolute path"},
		{name: "pool", in: `{"name":"n","ipv4Pools":["a/b"]}`, code: types.ErrInvalidNetworkConfig, errHas: `pool name "a/b"`},
		{name: "no family", in: `{"name":"n","assignIPv4":false}`, code: types.ErrInvalidNetworkConfig, errHas: "no address"},
		{name: "bad prevResult", in: `{"cniVersion":"1.1.0","name":"n","prevResult":{"ips":"x"}}`, code: types.ErrDecodingFailure, errHas: "prevResult"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseNetConf([]byte(tc.in))
			if tc.errHas != "" {
				var te *types.Error
				if !errors.As(err, &te) || te.Code != tc.code || !strings.Contains(te.Msg, tc.errHas) {
					t.Fatalf("error %v, want code %d mentioning %q", err, tc.code, tc.errHas)
				}
				return
			}
			if err != nil || !tc.check(c) {
				t.Fatalf("got %+v, %v", c, err)
			}
		})
	}
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("default", "web-0", "c1", "eth0")
	if len(a) != 13 || !strings.HasPrefix(a, "rz") {
		t.Fatalf("name %q: want rz + 11 hex digits", a)
	}
	if b := HostVethName("default", "web-0", "c2", "eth0"); b != a {
		t.Errorf("same pod, new sandbox: %q != %q (the name follows the pod)", b, a)
	}
	for _, other := range []string{HostVethName("default", "web-1", "c1", "eth0"), HostVethName("other", "web-0", "c1", "eth0"),
		HostVethName("default", "web-0", "c1", "net1"), HostVethName("", "", "c1", "eth0")} {
		if other == a {
			t.Errorf("distinct attachments share the name %q", a)
		}
	}
}

func TestParseResolvConf(t *testing.T) {
	dns := parseResolvConf([]byte("# comment\nnameserver 10.96.0.10\nnameserver 8.8.8.8 ; x\nsearch a.svc b.svc\ndomain cluster.local\noptions ndots:5 edns0\n"))
	if strings.Join(dns.Nameservers, ",") != "10.96.0.10,8.8.8.8" || strings.Join(dns.Search, ",") != "a.svc,b.svc" ||
		dns.Domain != "cluster.local" || strings.Join(dns.Options, ",") != "ndots:5,edns0" {
		t.Fatalf("parsed %+v", dns)
	}
}

func TestParseIPAMConf(t *testing.T) {
	_, ic, err := ParseIPAMConf([]byte(`{"cniVersion":"1.1.0","name":"br","type":"bridge","ipam":{"type":"rhizome-ipam","gateway":"10.1.0.1","routes":[{"dst":"0.0.0.0/0"}],"resolvConf":"/etc/resolv.conf"}}`))
	if err != nil || ic.gw4.String() != "10.1.0.1" || len(ic.Routes) != 1 {
		t.Fatalf("got %+v, %v", ic, err)
	}
	_, _, err = ParseIPAMConf([]byte(`{"name":"br","ipam":{"gateway":"fd00::1"}}`))
	if err == nil || !strings.Contains(err.Error(), `gateway "fd00::1" is not an IPv4 address`) {
		t.Fatalf("error %v", err)
	}
}

// FuzzParseNetConf checks that any stdin either parses into a config that
// passes its own checks or fails with a CNI error of code 6 or 7.
func FuzzParseNetConf(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/netconf/*.json")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := ParseNetConf(in)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || (te.Code != types.ErrDecodingFailure && te.Code != types.ErrInvalidNetworkConfig) || te.Msg == "" {
				t.Fatalf("error %#v: want a CNI error with code 6 or 7", err)
			}
			return
		}
		if c.Name == "" || (c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535)) || (!c.wantIPv4() && !c.AssignIPv6) {
			t.Fatalf("accepted %+v", c)
		}
		_, _, _ = ParseIPAMConf(in) // must not panic either
	})
}
