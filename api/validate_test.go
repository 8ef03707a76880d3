package api

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// Constructors of valid, defaulted objects; each test case changes one thing
// after defaulting, so that the rule under test is the only one broken.

func testPool(name, cidr string, change ...func(*IPPool)) *IPPool {
	p := &IPPool{ObjectMeta: ObjectMeta{Name: name}, Spec: IPPoolSpec{CIDR: cidr}}
	SetDefaults(p)
	for _, c := range change {
		c(p)
	}
	return p
}

func testReservation(name string, entries ...string) *IPReservation {
	r := &IPReservation{ObjectMeta: ObjectMeta{Name: name}, Spec: IPReservationSpec{ReservedCIDRs: entries}}
	SetDefaults(r)
	return r
}

func testBGPConfig(name string, change ...func(*BGPConfigurationSpec)) *BGPConfiguration {
	c := &BGPConfiguration{ObjectMeta: ObjectMeta{Name: name}}
	SetDefaults(c)
	for _, f := range change {
		f(&c.Spec)
	}
	return c
}

func testPeer(name string, change ...func(*BGPPeerSpec)) *BGPPeer {
	p := &BGPPeer{ObjectMeta: ObjectMeta{Name: name}, Spec: BGPPeerSpec{PeerIP: "10.0.0.1", ASNumber: NewASNumber(64513)}}
	SetDefaults(p)
	for _, f := range change {
		f(&p.Spec)
	}
	return p
}

func testNode(name string, bgp *NodeBGPSpec) *Node {
	n := &Node{ObjectMeta: ObjectMeta{Name: name}, Spec: NodeSpec{BGP: bgp}}
	SetDefaults(n)
	return n
}

type validateCase struct {
	name string
	obj  Object
	want []FieldError // Field exact, Rule a substring; nil = valid
}

// checkValidation asserts that err is nil when want is empty, and otherwise
// a *ValidationError matching ErrInvalid whose text names the object, and
// that holds every wanted field error.
func checkValidation(t *testing.T, err error, kind, name string, want []FieldError) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("want valid, got %v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("want errors %v, got none", want)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("errors.Is(err, ErrInvalid) = false for %v", err)
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("want *ValidationError, got %T: %v", err, err)
	}
	prefix := fmt.Sprintf("%s %q: ", kind, name)
	if name == "" {
		prefix = kind + " with no name: "
	}
	if !strings.HasPrefix(err.Error(), prefix) {
		t.Errorf("error %q does not start with %q", err, prefix)
	}
	for _, w := range want {
		found := false
		for _, fe := range ve.Errors {
			if fe.Field == w.Field && strings.Contains(fe.Rule, w.Rule) {
				found = true
				if !strings.Contains(err.Error(), fe.Field+" "+fe.Rule) {
					t.Errorf("error text %q lacks %q", err, fe.Field+" "+fe.Rule)
				}
			}
		}
		if !found {
			t.Errorf("want %s with rule containing %q, got %v", w.Field, w.Rule, err)
		}
	}
}

func runValidateCases(t *testing.T, cases []validateCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.obj)
			checkValidation(t, err, kindOf(tc.obj), tc.obj.GetObjectMeta().Name, tc.want)
		})
	}
}

func fe(field, rule string) []FieldError { return []FieldError{{Field: field, Rule: rule}} }

func TestValidateMetadata(t *testing.T) {
	runValidateCases(t, []validateCase{
		{"valid", testPool("rack-0", "10.0.0.0/16"), nil},
		{"valid dotted name", testPool("rack-0.dc1", "10.0.0.0/16"), nil},
		{"name required", testPool("", "10.0.0.0/16"), fe("metadata.name", "is required")},
		{"name uppercase", testPool("Rack-0", "10.0.0.0/16"), fe("metadata.name", `"Rack-0" is not a valid name: a lowercase RFC 1123 subdomain`)},
		{"name underscore", testPool("rack_0", "10.0.0.0/16"), fe("metadata.name", "lowercase RFC 1123 subdomain")},
		{"name too long", testPool(strings.Repeat("a", 254), "10.0.0.0/16"), fe("metadata.name", "must be no more than 253")},
		{"valid labels", testPool("p", "10.0.0.0/16", func(p *IPPool) {
			p.Labels = map[string]string{"rack": "0", "rhizome.io/route-reflector": "true", "empty": ""}
		}), nil},
		{"bad label key", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Labels = map[string]string{"a b": "x"} }),
			fe("metadata.labels", `key "a b" is not a valid label key`)},
		{"bad label value", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Labels = map[string]string{"rack": "a/b"} }),
			fe("metadata.labels", `value "a/b" of label "rack" is not a valid label value`)},
		{"label value too long", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Labels = map[string]string{"rack": strings.Repeat("x", 64)} }),
			fe("metadata.labels", "must be no more than 63")},
		{"wrong kind in TypeMeta", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Kind = "BGPPeer" }),
			fe("kind", `"BGPPeer" does not match the object's type IPPool`)},
		{"wrong apiVersion in TypeMeta", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.APIVersion = "v1" }),
			fe("apiVersion", `"v1" is not supported`)},
	})
}

func TestValidateIPPool(t *testing.T) {
	runValidateCases(t, []validateCase{
		{"v4 defaults", testPool("p", "10.244.0.0/16"), nil},
		{"v6 defaults", testPool("p", "fd00:10:244::/48"), nil},
		{"cidr required", testPool("p", ""), fe("spec.cidr", "is required")},
		{"cidr garbage", testPool("p", "10.0.0/8"), fe("spec.cidr", `"10.0.0/8" is not a CIDR`)},
		{"cidr without prefix", testPool("p", "10.0.0.0"), fe("spec.cidr", `"10.0.0.0" is not a CIDR`)},
		{"cidr v4 prefix too long", testPool("p", "10.0.0.0/33"), fe("spec.cidr", "is not a CIDR")},
		{"cidr not canonical v4", testPool("p", "10.0.0.1/24"), fe("spec.cidr", "not canonical: use 10.0.0.0/24")},
		{"cidr not canonical v6", testPool("p", "fd00::1/64"), fe("spec.cidr", "not canonical: use fd00::/64")},
		{"cidr v6 uppercase", testPool("p", "FD00::/64"), fe("spec.cidr", "not canonical: use fd00::/64")},
		{"cidr v4-mapped v6", testPool("p", "::ffff:10.0.0.0/120"), fe("spec.cidr", "IPv4-mapped")},

		{"blockSize v4 min", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.BlockSize = 20 }), nil},
		{"blockSize v4 max", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.BlockSize = 32 }), nil},
		{"blockSize v4 below range", testPool("rack-0", "10.0.0.0/16", func(p *IPPool) { p.Spec.BlockSize = 19 }),
			fe("spec.blockSize", "19 out of range 20-32")},
		{"blockSize v4 above range", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.BlockSize = 33 }),
			fe("spec.blockSize", "33 out of range 20-32")},
		{"blockSize zero", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.BlockSize = 0 }),
			fe("spec.blockSize", "0 out of range 20-32")},
		{"blockSize v6 min", testPool("p", "fd00::/48", func(p *IPPool) { p.Spec.BlockSize = 116 }), nil},
		{"blockSize v6 max", testPool("p", "fd00::/48", func(p *IPPool) { p.Spec.BlockSize = 128 }), nil},
		{"blockSize v6 below range", testPool("p", "fd00::/48", func(p *IPPool) { p.Spec.BlockSize = 115 }),
			fe("spec.blockSize", "115 out of range 116-128")},
		{"blockSize v6 above range", testPool("p", "fd00::/48", func(p *IPPool) { p.Spec.BlockSize = 129 }),
			fe("spec.blockSize", "129 out of range 116-128")},
		{"blockSize v4 number on v6 pool", testPool("p", "fd00::/48", func(p *IPPool) { p.Spec.BlockSize = 26 }),
			fe("spec.blockSize", "26 out of range 116-128")},
		{"block does not fit v4", testPool("p", "192.168.0.0/24", func(p *IPPool) { p.Spec.BlockSize = 22 }),
			fe("spec.blockSize", "22 does not fit in the pool 192.168.0.0/24: a /22 block is larger than the /24 pool; use blockSize 24-32")},
		{"default block does not fit small v4 pool", testPool("p", "10.0.0.0/28"),
			fe("spec.blockSize", "26 does not fit in the pool 10.0.0.0/28")},
		{"block equals pool", testPool("p", "10.21.0.0/31", func(p *IPPool) { p.Spec.BlockSize = 31 }), nil},
		{"block does not fit v6", testPool("p", "fd00::/120", func(p *IPPool) { p.Spec.BlockSize = 118 }),
			fe("spec.blockSize", "118 does not fit in the pool fd00::/120")},

		{"ipip CrossSubnet", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.IPIPMode = EncapCrossSubnet }), nil},
		{"ipip bad", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.IPIPMode = "Sometimes" }),
			fe("spec.ipipMode", `"Sometimes" is not one of Always, CrossSubnet, Never`)},
		{"ipip empty", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.IPIPMode = "" }),
			fe("spec.ipipMode", "is empty: use one of Always, CrossSubnet, Never")},
		{"vxlan bad", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.VXLANMode = "Yes" }),
			fe("spec.vxlanMode", `"Yes" is not one of Always, CrossSubnet, Never`)},
		{"vxlan v6", testPool("p", "fd00::/48", func(p *IPPool) { p.Spec.VXLANMode = EncapAlways }), nil},
		{"ipip on v6", testPool("p", "fd00::/48", func(p *IPPool) { p.Spec.IPIPMode = EncapAlways }),
			fe("spec.ipipMode", "Always is not possible on an IPv6 pool")},
		{"ipip CrossSubnet on v6", testPool("p", "fd00::/48", func(p *IPPool) { p.Spec.IPIPMode = EncapCrossSubnet }),
			fe("spec.ipipMode", "CrossSubnet is not possible on an IPv6 pool")},
		{"ipip and vxlan", testPool("p", "10.0.0.0/16", func(p *IPPool) {
			p.Spec.IPIPMode, p.Spec.VXLANMode = EncapAlways, EncapCrossSubnet
		}), fe("spec.vxlanMode", "CrossSubnet cannot be combined with ipipMode Always")},

		{"link-local v4", testPool("p", "169.254.0.0/16"), fe("spec.cidr", "overlaps the IPv4 link-local range 169.254.0.0/16")},
		{"inside link-local v4", testPool("p", "169.254.1.0/24"), fe("spec.cidr", "169.254.1.0/24 overlaps the IPv4 link-local range")},
		{"containing link-local v4", testPool("p", "169.0.0.0/8", func(p *IPPool) { p.Spec.BlockSize = 26 }),
			fe("spec.cidr", "overlaps the IPv4 link-local range")},
		{"loopback v4", testPool("p", "127.0.0.0/16"), fe("spec.cidr", "overlaps the IPv4 loopback range 127.0.0.0/8")},
		{"multicast v4", testPool("p", "239.0.0.0/16"), fe("spec.cidr", "overlaps the IPv4 multicast range 224.0.0.0/4")},
		{"everything v4", testPool("p", "0.0.0.0/0", func(p *IPPool) { p.Spec.BlockSize = 26 }),
			[]FieldError{{"spec.cidr", "loopback"}, {"spec.cidr", "link-local"}, {"spec.cidr", "multicast"}}},
		{"link-local v6", testPool("p", "fe80::/64"), fe("spec.cidr", "overlaps the IPv6 link-local range fe80::/10")},
		{"loopback v6", testPool("p", "::1/128", func(p *IPPool) { p.Spec.BlockSize = 128 }),
			fe("spec.cidr", "overlaps the IPv6 loopback address ::1/128")},
		{"multicast v6", testPool("p", "ff02::/64"), fe("spec.cidr", "overlaps the IPv6 multicast range ff00::/8")},
		{"just below link-local", testPool("p", "169.253.0.0/16"), nil},

		{"nodeSelector k8s", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.NodeSelector = "rack in (0,1)" }), nil},
		{"nodeSelector calico", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.NodeSelector = `rack == "0"` }), nil},
		{"nodeSelector bad", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.NodeSelector = "rack ==" + " ==" }),
			fe("spec.nodeSelector", `invalid selector "rack == =="`)},
		{"nodeSelector or", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.NodeSelector = `a == "1" || b == "2"` }),
			fe("spec.nodeSelector", "rhizome selectors are conjunctions")},
		{"namespaceSelector bad", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.NamespaceSelector = "has(" }),
			fe("spec.namespaceSelector", `invalid selector "has("`)},
		{"namespaceSelector good", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.NamespaceSelector = "team=a" }), nil},

		{"assignment Manual", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.AssignmentMode = AssignmentManual }), nil},
		{"assignment bad", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.AssignmentMode = "Sometimes" }),
			fe("spec.assignmentMode", `"Sometimes" is not one of Automatic, Manual`)},

		{"allowedUses workload only", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.AllowedUses = []IPUse{UseWorkload} }), nil},
		{"allowedUses empty", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.AllowedUses = nil }),
			fe("spec.allowedUses", "is empty")},
		{"allowedUses bad", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.AllowedUses = []IPUse{UseWorkload, "Service"} }),
			fe("spec.allowedUses[1]", `"Service" is not one of Workload, Tunnel`)},
		{"allowedUses duplicate", testPool("p", "10.0.0.0/16", func(p *IPPool) { p.Spec.AllowedUses = []IPUse{UseTunnel, UseTunnel} }),
			fe("spec.allowedUses[1]", "Tunnel is listed twice")},
		{"allowedUses tunnel on v6 (VXLAN's IPv6 tunnel address)", testPool("p", "fd00::/48", func(p *IPPool) { p.Spec.AllowedUses = []IPUse{UseWorkload, UseTunnel} }), nil},
		{"allowedUses tunnel on v6 with vxlanMode", testPool("p", "fd00::/48", func(p *IPPool) {
			p.Spec.AllowedUses, p.Spec.VXLANMode = []IPUse{UseTunnel}, EncapCrossSubnet
		}), nil},
		{"allowedUses tunnel on v6 with ipipMode", testPool("p", "fd00::/48", func(p *IPPool) {
			p.Spec.AllowedUses, p.Spec.IPIPMode = []IPUse{UseWorkload, UseTunnel}, EncapAlways
		}), fe("spec.ipipMode", "Always is not possible on an IPv6 pool: IPIP carries IPv4 only")},
		{"allowedUses duplicate tunnel on v6", testPool("p", "fd00::/48", func(p *IPPool) { p.Spec.AllowedUses = []IPUse{UseTunnel, UseTunnel} }),
			fe("spec.allowedUses[1]", "Tunnel is listed twice")},
	})
}

func TestValidateIPReservation(t *testing.T) {
	runValidateCases(t, []validateCase{
		{"valid v4", testReservation("r", "10.0.0.0/28", "10.0.1.5", "10.0.2.5-10.0.2.9"), nil},
		{"valid v6", testReservation("r", "fd00::/120", "fd00::1:5", "fd00::2:5-fd00::2:9"), nil},
		{"empty", testReservation("r"), fe("spec.reservedCIDRs", "is empty")},
		{"not canonical v4", testReservation("r", "10.0.0.0/28", "10.0.1.0/28", "10.0.0.1/24"),
			fe("spec.reservedCIDRs[2]", "10.0.0.1/24 not canonical: use 10.0.0.0/24")},
		{"not canonical v6", testReservation("r", "fd00::1/64"), fe("spec.reservedCIDRs[0]", "fd00::1/64 not canonical: use fd00::/64")},
		{"garbage", testReservation("r", "10.0.0.x"), fe("spec.reservedCIDRs[0]", `"10.0.0.x" is not an IP address`)},
		{"backwards range", testReservation("r", "10.0.0.9-10.0.0.5"), fe("spec.reservedCIDRs[0]", "is backwards: write it as 10.0.0.5-10.0.0.9")},
		{"mixed range", testReservation("r", "10.0.0.1-fd00::1"), fe("spec.reservedCIDRs[0]", "mixes IPv4 and IPv6")},
		{"backwards range v6", testReservation("r", "fd00::9-fd00::5"), fe("spec.reservedCIDRs[0]", "is backwards")},
		{"empty entry", testReservation("r", "10.0.0.1", ""), fe("spec.reservedCIDRs[1]", "empty entry")},
	})
}

func TestValidateBGPConfiguration(t *testing.T) {
	runValidateCases(t, []validateCase{
		{"default empty", testBGPConfig("default"), nil},
		{"node override", testBGPConfig("node.rack0-node1", func(s *BGPConfigurationSpec) { s.ASNumber = NewASNumber(64514) }), nil},
		{"full", testBGPConfig("default", func(s *BGPConfigurationSpec) {
			mesh := false
			s.ASNumber, s.NodeToNodeMeshEnabled, s.ListenPort = NewASNumber(4294967295), &mesh, 65535
			s.RouteReflectorClusterID, s.LogSeverity, s.GracefulRestartSeconds = "244.0.0.2", "Debug", 4095
			s.MeshPassword = &SecretSource{SecretKeyRef: &SecretKeySelector{Name: "bgp-secrets", Key: "mesh"}}
		}), nil},
		{"bad name", testBGPConfig("global"), fe("metadata.name", `"global" must be "default" (cluster-wide settings) or "node.<node-name>"`)},
		{"node without name", testBGPConfig("node."), fe("metadata.name", "is not a valid name")},
		{"asNumber zero", testBGPConfig("default", func(s *BGPConfigurationSpec) { s.ASNumber = NewASNumber(0) }),
			fe("spec.asNumber", "0 out of range 1-4294967295")},
		{"listenPort negative", testBGPConfig("default", func(s *BGPConfigurationSpec) { s.ListenPort = -1 }),
			fe("spec.listenPort", "-1 out of range 1-65535")},
		{"listenPort too big", testBGPConfig("default", func(s *BGPConfigurationSpec) { s.ListenPort = 65536 }),
			fe("spec.listenPort", "65536 out of range 1-65535")},
		{"cluster ID v6", testBGPConfig("default", func(s *BGPConfigurationSpec) { s.RouteReflectorClusterID = "fd00::1" }),
			fe("spec.routeReflectorClusterID", `"fd00::1" is not a dotted IPv4 address`)},
		{"cluster ID number", testBGPConfig("default", func(s *BGPConfigurationSpec) { s.RouteReflectorClusterID = "12345" }),
			fe("spec.routeReflectorClusterID", "is not a dotted IPv4 address")},
		{"log severity lower case", testBGPConfig("default", func(s *BGPConfigurationSpec) { s.LogSeverity = "warning" }), nil},
		{"log severity bad", testBGPConfig("default", func(s *BGPConfigurationSpec) { s.LogSeverity = "Verbose" }),
			fe("spec.logSeverity", `"Verbose" is not one of Debug, Info, Warning, Error, Fatal`)},
		{"log severity screen bad", testBGPConfig("default", func(s *BGPConfigurationSpec) { s.LogSeverityScreen = "Loud" }),
			fe("spec.logSeverityScreen", `"Loud" is not one of`)},
		{"graceful restart negative", testBGPConfig("default", func(s *BGPConfigurationSpec) { s.GracefulRestartSeconds = -1 }),
			fe("spec.gracefulRestartSeconds", "-1 out of range 0-4095")},
		{"graceful restart too long", testBGPConfig("default", func(s *BGPConfigurationSpec) { s.GracefulRestartSeconds = 4096 }),
			fe("spec.gracefulRestartSeconds", "4096 out of range 0-4095")},
		{"mesh password file", testBGPConfig("default", func(s *BGPConfigurationSpec) {
			s.MeshPassword = &SecretSource{File: "/etc/rhizome/mesh-password"}
		}), nil},
		{"mesh password bad", testBGPConfig("default", func(s *BGPConfigurationSpec) { s.MeshPassword = &SecretSource{} }),
			fe("spec.meshPassword", "sets neither secretKeyRef nor file")},
	})
}

func TestValidateSecretSource(t *testing.T) {
	withPassword := func(s *SecretSource) *BGPPeer {
		return testPeer("p", func(p *BGPPeerSpec) { p.Password = s })
	}
	ref := func(name, key string) *SecretSource {
		return &SecretSource{SecretKeyRef: &SecretKeySelector{Name: name, Key: key}}
	}
	runValidateCases(t, []validateCase{
		{"secret ref", withPassword(ref("bgp-passwords", "tor-1")), nil},
		{"secret ref dotted key", withPassword(ref("bgp-passwords", "tor_1.password")), nil},
		{"file", withPassword(&SecretSource{File: "/run/secrets/bgp"}), nil},
		{"both", withPassword(&SecretSource{SecretKeyRef: &SecretKeySelector{Name: "s", Key: "k"}, File: "/x"}),
			fe("spec.password", "sets both secretKeyRef and file: set exactly one")},
		{"neither", withPassword(&SecretSource{}), fe("spec.password", "sets neither secretKeyRef nor file")},
		{"ref without name", withPassword(ref("", "k")), fe("spec.password.secretKeyRef.name", "is required")},
		{"ref bad name", withPassword(ref("My_Secret", "k")), fe("spec.password.secretKeyRef.name", `"My_Secret" is not a valid Secret name`)},
		{"ref without key", withPassword(ref("s", "")), fe("spec.password.secretKeyRef.key", "is required")},
		{"ref bad key", withPassword(ref("s", "a/b")), fe("spec.password.secretKeyRef.key", `"a/b" is not a valid Secret key`)},
		{"relative file", withPassword(&SecretSource{File: "etc/bgp"}), fe("spec.password.file", `"etc/bgp" is not an absolute path`)},
	})
}

func TestValidateBGPPeer(t *testing.T) {
	runValidateCases(t, []validateCase{
		{"external v4", testPeer("tor"), nil},
		{"external v6", testPeer("tor", func(s *BGPPeerSpec) { s.PeerIP = "fd00::1" }), nil},
		{"external v4 port", testPeer("tor", func(s *BGPPeerSpec) { s.PeerIP = "10.0.0.1:1179" }), nil},
		{"external v6 port", testPeer("tor", func(s *BGPPeerSpec) { s.PeerIP = "[fd00::1]:1179" }), nil},
		{"selector", testPeer("rr", func(s *BGPPeerSpec) {
			s.PeerIP, s.ASNumber, s.NodeSelector, s.PeerSelector = "", nil, "all()", "route-reflector == 'true'"
		}), nil},
		{"both peerIP and selector", testPeer("p", func(s *BGPPeerSpec) { s.PeerSelector = "rr=true" }),
			fe("spec.peerSelector", "cannot be combined with peerIP")},
		{"neither peerIP nor selector", testPeer("p", func(s *BGPPeerSpec) { s.PeerIP, s.ASNumber = "", nil }),
			fe("spec.peerIP", "is required unless peerSelector is set")},
		{"peerIP without AS", testPeer("p", func(s *BGPPeerSpec) { s.ASNumber = nil }),
			fe("spec.asNumber", "is required with peerIP")},
		{"selector with AS", testPeer("p", func(s *BGPPeerSpec) { s.PeerIP, s.PeerSelector = "", "rr=true" }),
			fe("spec.asNumber", "must not be set with peerSelector")},
		{"AS zero", testPeer("p", func(s *BGPPeerSpec) { s.ASNumber = NewASNumber(0) }), fe("spec.asNumber", "0 out of range 1-4294967295")},
		{"AS max", testPeer("p", func(s *BGPPeerSpec) { s.ASNumber = NewASNumber(4294967295) }), nil},
		{"peerIP garbage", testPeer("p", func(s *BGPPeerSpec) { s.PeerIP = "tor-1" }), fe("spec.peerIP", `"tor-1" is not an IP address`)},
		{"peerIP port zero", testPeer("p", func(s *BGPPeerSpec) { s.PeerIP = "10.0.0.1:0" }), fe("spec.peerIP", "port 0 out of range 1-65535")},
		{"peerIP port too big", testPeer("p", func(s *BGPPeerSpec) { s.PeerIP = "10.0.0.1:65536" }), fe("spec.peerIP", "is not an IP address")},
		{"peerIP v6 port zero", testPeer("p", func(s *BGPPeerSpec) { s.PeerIP = "[fd00::1]:0" }), fe("spec.peerIP", "port 0 out of range")},
		{"peerIP v6 port without brackets", testPeer("p", func(s *BGPPeerSpec) { s.PeerIP = "fd00::1:179:x" }), fe("spec.peerIP", "is not an IP address")},
		{"peerIP zone", testPeer("p", func(s *BGPPeerSpec) { s.PeerIP = "fe80::1%eth0" }), fe("spec.peerIP", "has an IPv6 zone")},
		{"node", testPeer("p", func(s *BGPPeerSpec) { s.Node = "rack0-node1" }), nil},
		{"node and nodeSelector", testPeer("p", func(s *BGPPeerSpec) { s.Node, s.NodeSelector = "n1", "rack=0" }),
			fe("spec.nodeSelector", "cannot be combined with node")},
		{"bad node name", testPeer("p", func(s *BGPPeerSpec) { s.Node = "Node_1" }), fe("spec.node", `"Node_1" is not a valid node name`)},
		{"bad nodeSelector", testPeer("p", func(s *BGPPeerSpec) { s.NodeSelector = "rack contains 'x'" }),
			fe("spec.nodeSelector", `the Calico operator "contains" is not supported`)},
		{"bad peerSelector", testPeer("p", func(s *BGPPeerSpec) { s.PeerIP, s.ASNumber, s.PeerSelector = "", nil, "global()" }),
			fe("spec.peerSelector", "global() is not supported")},
		{"timers", testPeer("p", func(s *BGPPeerSpec) { s.KeepaliveSeconds, s.HoldSeconds = 3, 9 }), nil},
		{"hold minimum", testPeer("p", func(s *BGPPeerSpec) { s.HoldSeconds = 3 }), nil},
		{"hold too short", testPeer("p", func(s *BGPPeerSpec) { s.HoldSeconds = 2 }), fe("spec.holdSeconds", "2 is too short")},
		{"hold negative", testPeer("p", func(s *BGPPeerSpec) { s.HoldSeconds = -1 }), fe("spec.holdSeconds", "-1 out of range 3-65535")},
		{"hold too long", testPeer("p", func(s *BGPPeerSpec) { s.HoldSeconds = 65536 }), fe("spec.holdSeconds", "65536 out of range 3-65535")},
		{"keepalive negative", testPeer("p", func(s *BGPPeerSpec) { s.KeepaliveSeconds = -1 }), fe("spec.keepaliveSeconds", "-1 out of range")},
		{"keepalive not below hold", testPeer("p", func(s *BGPPeerSpec) { s.KeepaliveSeconds, s.HoldSeconds = 9, 9 }),
			fe("spec.keepaliveSeconds", "9 must be less than holdSeconds 9")},
		{"keepalive alone", testPeer("p", func(s *BGPPeerSpec) { s.KeepaliveSeconds = 100 }), nil},
		{"graceful restart", testPeer("p", func(s *BGPPeerSpec) { s.GracefulRestartSeconds = 4095 }), nil},
		{"graceful restart too long", testPeer("p", func(s *BGPPeerSpec) { s.GracefulRestartSeconds = 4096 }),
			fe("spec.gracefulRestartSeconds", "4096 out of range 0-4095")},
		{"graceful restart negative", testPeer("p", func(s *BGPPeerSpec) { s.GracefulRestartSeconds = -5 }),
			fe("spec.gracefulRestartSeconds", "-5 out of range 0-4095")},
		{"next hop Self", testPeer("p", func(s *BGPPeerSpec) { s.NextHopMode = NextHopSelf }), nil},
		{"next hop Keep", testPeer("p", func(s *BGPPeerSpec) { s.NextHopMode = NextHopKeep }), nil},
		{"next hop bad", testPeer("p", func(s *BGPPeerSpec) { s.NextHopMode = "Other" }),
			fe("spec.nextHopMode", `"Other" is not one of Auto, Self, Keep`)},
		{"source address None", testPeer("p", func(s *BGPPeerSpec) { s.SourceAddress = SourceAddressNone }), nil},
		{"source address bad", testPeer("p", func(s *BGPPeerSpec) { s.SourceAddress = "10.0.0.9" }),
			fe("spec.sourceAddress", `"10.0.0.9" is not one of UseNodeIP, None`)},
		{"password bad", testPeer("p", func(s *BGPPeerSpec) { s.Password = &SecretSource{File: "x"} }),
			fe("spec.password.file", "is not an absolute path")},
	})
}

func TestValidateNode(t *testing.T) {
	runValidateCases(t, []validateCase{
		{"no bgp", testNode("node-1", nil), nil},
		{"full", testNode("node-1", &NodeBGPSpec{
			IPv4Address: "10.0.0.5/24", IPv6Address: "fd00::5/64", ASNumber: NewASNumber(64514),
			RouteReflectorClusterID: "244.0.0.1", IPv4TunnelAddr: "192.168.0.1",
		}), nil},
		{"host /32", testNode("n", &NodeBGPSpec{IPv4Address: "10.0.0.5/32"}), nil},
		{"v4 without prefix", testNode("n", &NodeBGPSpec{IPv4Address: "10.0.0.5"}),
			fe("spec.bgp.ipv4Address", `"10.0.0.5" is not an IPv4 address in CIDR form (e.g. 10.0.0.5/24)`)},
		{"v4 field with v6", testNode("n", &NodeBGPSpec{IPv4Address: "fd00::5/64"}), fe("spec.bgp.ipv4Address", "is not an IPv4 address")},
		{"v6 field with v4", testNode("n", &NodeBGPSpec{IPv6Address: "10.0.0.5/24"}), fe("spec.bgp.ipv6Address", `"10.0.0.5/24" is not an IPv6 address in CIDR form`)},
		{"v6 without prefix", testNode("n", &NodeBGPSpec{IPv6Address: "fd00::5"}), fe("spec.bgp.ipv6Address", "is not an IPv6 address in CIDR form")},
		{"v6 mapped", testNode("n", &NodeBGPSpec{IPv6Address: "::ffff:10.0.0.5/120"}), fe("spec.bgp.ipv6Address", "is not an IPv6 address")},
		{"AS zero", testNode("n", &NodeBGPSpec{ASNumber: NewASNumber(0)}), fe("spec.bgp.asNumber", "0 out of range 1-4294967295")},
		{"cluster ID bad", testNode("n", &NodeBGPSpec{RouteReflectorClusterID: "244.0.0"}),
			fe("spec.bgp.routeReflectorClusterID", `"244.0.0" is not a dotted IPv4 address`)},
		{"tunnel addr CIDR", testNode("n", &NodeBGPSpec{IPv4TunnelAddr: "192.168.0.1/32"}),
			fe("spec.bgp.ipv4TunnelAddr", `"192.168.0.1/32" is not an IPv4 address`)},
		{"tunnel addr v6", testNode("n", &NodeBGPSpec{IPv4TunnelAddr: "fd00::1"}), fe("spec.bgp.ipv4TunnelAddr", "is not an IPv4 address")},
		{"bad name", testNode("Node 1", nil), fe("metadata.name", "is not a valid name")},
		{"vxlan v4 and v6", vxlanNode(func(s *NodeSpec) {
			s.IPv4VXLANTunnelAddr, s.VXLANTunnelMACAddr = "192.168.0.1", "66:0b:5e:22:91:c3"
			s.IPv6VXLANTunnelAddr, s.VXLANTunnelMACAddrV6 = "fd00:10:244::1", "66:0B:5E:22:91:C4"
		}), nil},
		{"vxlan addr v6 in v4 field", vxlanNode(func(s *NodeSpec) { s.IPv4VXLANTunnelAddr = "fd00::1" }),
			fe("spec.ipv4VXLANTunnelAddr", `"fd00::1" is not an IPv4 address`)},
		{"vxlan addr CIDR", vxlanNode(func(s *NodeSpec) { s.IPv4VXLANTunnelAddr = "192.168.0.1/32" }),
			fe("spec.ipv4VXLANTunnelAddr", `"192.168.0.1/32" is not an IPv4 address`)},
		{"vxlan v6 addr v4", vxlanNode(func(s *NodeSpec) { s.IPv6VXLANTunnelAddr = "192.168.0.1" }),
			fe("spec.ipv6VXLANTunnelAddr", `"192.168.0.1" is not an IPv6 address`)},
		{"vxlan v6 addr mapped", vxlanNode(func(s *NodeSpec) { s.IPv6VXLANTunnelAddr = "::ffff:192.168.0.1" }),
			fe("spec.ipv6VXLANTunnelAddr", "is not an IPv6 address")},
		{"vxlan MAC garbage", vxlanNode(func(s *NodeSpec) { s.VXLANTunnelMACAddr = "66:0b:5e:22:91" }),
			fe("spec.vxlanTunnelMACAddr", `"66:0b:5e:22:91" is not an Ethernet MAC address`)},
		{"vxlan MAC too long", vxlanNode(func(s *NodeSpec) { s.VXLANTunnelMACAddrV6 = "00:00:5e:00:53:01:02:03" }),
			fe("spec.vxlanTunnelMACAddrV6", "is not an Ethernet MAC address")},
		{"vxlan MAC multicast", vxlanNode(func(s *NodeSpec) { s.VXLANTunnelMACAddr = "01:00:5e:00:00:01" }),
			fe("spec.vxlanTunnelMACAddr", "is a multicast MAC address")},
		{"vxlan MAC zero", vxlanNode(func(s *NodeSpec) { s.VXLANTunnelMACAddrV6 = "00:00:00:00:00:00" }),
			fe("spec.vxlanTunnelMACAddrV6", "is the all-zero MAC address")},
	})
}

func vxlanNode(edit func(*NodeSpec)) *Node {
	n := testNode("node-1", nil)
	edit(&n.Spec)
	return n
}

func TestValidationErrorText(t *testing.T) {
	err := Validate(testPool("rack-0", "10.0.0.0/16", func(p *IPPool) { p.Spec.BlockSize = 19 }))
	if got, want := err.Error(), `IPPool "rack-0": spec.blockSize 19 out of range 20-32`; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	err = Validate(testPool("rack-0", "10.0.0.1/24", func(p *IPPool) { p.Spec.IPIPMode = "x" }))
	want := `IPPool "rack-0": spec.cidr 10.0.0.1/24 not canonical: use 10.0.0.0/24; spec.ipipMode "x" is not one of Always, CrossSubnet, Never`
	if err.Error() != want {
		t.Errorf("got %q, want %q", err, want)
	}
	if errors.Is(errors.New("x"), ErrInvalid) {
		t.Error("unrelated error matches ErrInvalid")
	}
	wrapped := fmt.Errorf("apply: %w", err)
	if !errors.Is(wrapped, ErrInvalid) {
		t.Error("wrapped validation error does not match ErrInvalid")
	}
}

func TestValidateOddInput(t *testing.T) {
	for _, obj := range []Object{nil, (*IPPool)(nil), (*Node)(nil)} {
		if err := Validate(obj); !errors.Is(err, ErrInvalid) {
			t.Errorf("Validate(%#v) = %v, want ErrInvalid", obj, err)
		}
		if err := ValidateUpdate(obj, obj); !errors.Is(err, ErrInvalid) {
			t.Errorf("ValidateUpdate(%#v) = %v, want ErrInvalid", obj, err)
		}
		SetDefaults(obj) // must not panic
	}
}

func TestValidateUpdate(t *testing.T) {
	cases := []struct {
		name     string
		old, new Object
		want     []FieldError
	}{
		{"pool unchanged but disabled", testPool("a", "10.0.0.0/16"), testPool("a", "10.0.0.0/16", func(p *IPPool) { p.Spec.Disabled = true }), nil},
		{"pool cidr", testPool("a", "10.0.0.0/16"), testPool("a", "10.1.0.0/16"),
			fe("spec.cidr", "is immutable (was 10.0.0.0/16, now 10.1.0.0/16): create a new pool and disable the old one")},
		{"pool cidr v6", testPool("a", "fd00::/48"), testPool("a", "fd01::/48"), fe("spec.cidr", "is immutable (was fd00::/48, now fd01::/48)")},
		{"pool blockSize", testPool("a", "10.0.0.0/16"), testPool("a", "10.0.0.0/16", func(p *IPPool) { p.Spec.BlockSize = 24 }),
			fe("spec.blockSize", "is immutable (was 26, now 24)")},
		{"pool blockSize v6", testPool("a", "fd00::/48"), testPool("a", "fd00::/48", func(p *IPPool) { p.Spec.BlockSize = 120 }),
			fe("spec.blockSize", "is immutable (was 122, now 120)")},
		{"pool blockSize left to default", testPool("a", "10.0.0.0/16"), testPool("a", "10.0.0.0/16", func(p *IPPool) { p.Spec.BlockSize = 0 }),
			fe("spec.blockSize", "0 out of range")}, // Validate(new) complains; immutability does not
		{"new invalid too", testPool("a", "10.0.0.0/16"), testPool("a", "10.1.0.0/16", func(p *IPPool) { p.Spec.IPIPMode = "x" }),
			[]FieldError{{"spec.cidr", "is immutable"}, {"spec.ipipMode", `"x" is not one of`}}},
		{"name", testPool("a", "10.0.0.0/16"), testPool("b", "10.0.0.0/16"), fe("metadata.name", `is immutable (was "a", now "b")`)},
		{"kind", testPool("a", "10.0.0.0/16"), testPeer("a"), fe("kind", "cannot change from IPPool to BGPPeer")},
		{"peer change", testPeer("a"), testPeer("a", func(s *BGPPeerSpec) { s.PeerIP = "10.0.0.2" }), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateUpdate(tc.old, tc.new)
			checkValidation(t, err, kindOf(tc.new), tc.new.GetObjectMeta().Name, tc.want)
		})
	}
	// The documented example, in full.
	err := ValidateUpdate(testPool("a", "10.0.0.0/16"), testPool("a", "10.1.0.0/16"))
	want := `IPPool "a": spec.cidr is immutable (was 10.0.0.0/16, now 10.1.0.0/16): create a new pool and disable the old one`
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

func TestValidatePoolOverlap(t *testing.T) {
	others := []*IPPool{
		testPool("a", "10.1.0.0/16"),
		testPool("v6", "fd00:1::/48"),
		nil,
		{ObjectMeta: ObjectMeta{Name: "broken"}, Spec: IPPoolSpec{CIDR: "garbage"}},
	}
	cases := []struct {
		name string
		pool *IPPool
		want []FieldError
	}{
		{"disjoint v4", testPool("b", "10.2.0.0/16"), nil},
		{"disjoint v6", testPool("b", "fd00:2::/48"), nil},
		{"contains", testPool("b", "10.0.0.0/8"), fe("spec.cidr", `10.0.0.0/8 overlaps IPPool "a" (10.1.0.0/16)`)},
		{"inside", testPool("b", "10.1.2.0/24"), fe("spec.cidr", `10.1.2.0/24 overlaps IPPool "a" (10.1.0.0/16)`)},
		{"equal", testPool("b", "10.1.0.0/16"), fe("spec.cidr", `overlaps IPPool "a"`)},
		{"v6 inside", testPool("b", "fd00:1:0:1::/64"), fe("spec.cidr", `fd00:1:0:1::/64 overlaps IPPool "v6" (fd00:1::/48)`)},
		{"same name is the pool itself", testPool("a", "10.1.0.0/16"), nil},
		{"same name moved", testPool("a", "10.1.0.0/24"), nil},
		{"unparseable", testPool("b", "nope"), fe("spec.cidr", `"nope" is not a CIDR`)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkValidation(t, ValidatePoolOverlap(tc.pool, others), KindIPPool, tc.pool.Name, tc.want)
		})
	}
	err := ValidatePoolOverlap(testPool("b", "10.0.0.0/8"), others)
	if want := `IPPool "b": spec.cidr 10.0.0.0/8 overlaps IPPool "a" (10.1.0.0/16)`; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	if err := ValidatePoolOverlap(nil, others); err != nil {
		t.Errorf("nil pool: %v", err)
	}
}
