package api

import (
	"reflect"
	"testing"
)

func TestSetDefaultsIPPool(t *testing.T) {
	cases := []struct {
		name string
		in   IPPoolSpec
		want IPPoolSpec
	}{
		{"v4 empty", IPPoolSpec{CIDR: "10.0.0.0/16"}, IPPoolSpec{
			CIDR: "10.0.0.0/16", BlockSize: 26, IPIPMode: EncapNever, VXLANMode: EncapNever, NodeSelector: "all()",
			AssignmentMode: AssignmentAutomatic, AllowedUses: []IPUse{UseWorkload, UseTunnel},
		}},
		{"v6 empty", IPPoolSpec{CIDR: "fd00::/48"}, IPPoolSpec{
			CIDR: "fd00::/48", BlockSize: 122, IPIPMode: EncapNever, VXLANMode: EncapNever, NodeSelector: "all()",
			AssignmentMode: AssignmentAutomatic, AllowedUses: []IPUse{UseWorkload, UseTunnel},
		}},
		{"v6 workload only kept", IPPoolSpec{CIDR: "fd00::/48", AllowedUses: []IPUse{"workload"}}, IPPoolSpec{
			CIDR: "fd00::/48", BlockSize: 122, IPIPMode: EncapNever, VXLANMode: EncapNever, NodeSelector: "all()",
			AssignmentMode: AssignmentAutomatic, AllowedUses: []IPUse{UseWorkload},
		}},
		{"v6 vxlan tunnel only", IPPoolSpec{CIDR: "fd00::/48", VXLANMode: "always", AllowedUses: []IPUse{"Tunnel"}}, IPPoolSpec{
			CIDR: "fd00::/48", BlockSize: 122, IPIPMode: EncapNever, VXLANMode: EncapAlways, NodeSelector: "all()",
			AssignmentMode: AssignmentAutomatic, AllowedUses: []IPUse{UseTunnel},
		}},
		{"cidr unparseable", IPPoolSpec{CIDR: "nope"}, IPPoolSpec{
			CIDR: "nope", BlockSize: 0, IPIPMode: EncapNever, VXLANMode: EncapNever, NodeSelector: "all()",
			AssignmentMode: AssignmentAutomatic, AllowedUses: []IPUse{UseWorkload, UseTunnel},
		}},
		{"set values kept, case normalised", IPPoolSpec{
			CIDR: "10.0.0.1/24", BlockSize: 28, IPIPMode: "always", VXLANMode: "crossSubnet", NodeSelector: `rack == "0"`,
			AssignmentMode: "MANUAL", AllowedUses: []IPUse{"tunnel"}, NATOutgoing: true, Disabled: true,
		}, IPPoolSpec{
			CIDR: "10.0.0.1/24", BlockSize: 28, IPIPMode: EncapAlways, VXLANMode: EncapCrossSubnet, NodeSelector: `rack == "0"`,
			AssignmentMode: AssignmentManual, AllowedUses: []IPUse{UseTunnel}, NATOutgoing: true, Disabled: true,
		}},
		{"unknown values stay", IPPoolSpec{CIDR: "10.0.0.0/16", IPIPMode: "sometimes", AssignmentMode: "Auto", AllowedUses: []IPUse{"x"}},
			IPPoolSpec{CIDR: "10.0.0.0/16", BlockSize: 26, IPIPMode: "sometimes", VXLANMode: EncapNever, NodeSelector: "all()",
				AssignmentMode: "Auto", AllowedUses: []IPUse{"x"}}},
		{"never", IPPoolSpec{CIDR: "10.0.0.0/16", IPIPMode: "NEVER", VXLANMode: "never"},
			IPPoolSpec{CIDR: "10.0.0.0/16", BlockSize: 26, IPIPMode: EncapNever, VXLANMode: EncapNever, NodeSelector: "all()",
				AssignmentMode: AssignmentAutomatic, AllowedUses: []IPUse{UseWorkload, UseTunnel}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := &IPPool{ObjectMeta: ObjectMeta{Name: "p"}, Spec: tc.in}
			SetDefaults(p)
			if !reflect.DeepEqual(p.Spec, tc.want) {
				t.Errorf("got  %+v\nwant %+v", p.Spec, tc.want)
			}
			if p.APIVersion != GroupVersion || p.Kind != KindIPPool {
				t.Errorf("TypeMeta %+v", p.TypeMeta)
			}
			checkIdempotent(t, p)
		})
	}
}

func checkIdempotent(t *testing.T, obj Object) {
	t.Helper()
	once, err := MarshalJSON(obj)
	if err != nil {
		t.Fatal(err)
	}
	SetDefaults(obj)
	twice, _ := MarshalJSON(obj)
	if string(once) != string(twice) {
		t.Errorf("SetDefaults is not idempotent:\n%s\n%s", once, twice)
	}
}

func TestSetDefaultsBGPConfiguration(t *testing.T) {
	cases := []struct {
		name string
		in   BGPConfigurationSpec
		want BGPConfigurationSpec
	}{
		{"empty stays empty", BGPConfigurationSpec{}, BGPConfigurationSpec{}},
		{"Calico screen severity moves", BGPConfigurationSpec{LogSeverityScreen: "Info"}, BGPConfigurationSpec{LogSeverity: "Info"}},
		{"severity wins over screen", BGPConfigurationSpec{LogSeverity: "Debug", LogSeverityScreen: "Info"}, BGPConfigurationSpec{LogSeverity: "Debug"}},
		{"case normalised", BGPConfigurationSpec{LogSeverityScreen: "warning"}, BGPConfigurationSpec{LogSeverity: "Warning"}},
		{"unknown stays", BGPConfigurationSpec{LogSeverity: "loud"}, BGPConfigurationSpec{LogSeverity: "loud"}},
		{"no cluster defaults stored", BGPConfigurationSpec{ASNumber: NewASNumber(63400)}, BGPConfigurationSpec{ASNumber: NewASNumber(63400)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &BGPConfiguration{ObjectMeta: ObjectMeta{Name: "default"}, Spec: tc.in}
			SetDefaults(c)
			if !reflect.DeepEqual(c.Spec, tc.want) {
				t.Errorf("got %+v, want %+v", c.Spec, tc.want)
			}
			checkIdempotent(t, c)
		})
	}
}

func TestSetDefaultsBGPPeerAndNode(t *testing.T) {
	p := &BGPPeer{ObjectMeta: ObjectMeta{Name: "p"}}
	SetDefaults(p)
	if p.Spec.NextHopMode != NextHopAuto || p.Spec.SourceAddress != SourceAddressUseNodeIP ||
		p.Spec.KeepaliveSeconds != 0 || p.Spec.HoldSeconds != 0 || p.Kind != KindBGPPeer {
		t.Errorf("got %+v", p)
	}
	checkIdempotent(t, p)
	p = &BGPPeer{Spec: BGPPeerSpec{NextHopMode: "self", SourceAddress: "none"}}
	SetDefaults(p)
	if p.Spec.NextHopMode != NextHopSelf || p.Spec.SourceAddress != SourceAddressNone {
		t.Errorf("case not normalised: %+v", p.Spec)
	}

	n := &Node{ObjectMeta: ObjectMeta{Name: "n"}, TypeMeta: TypeMeta{APIVersion: CalicoGroupVersion}}
	SetDefaults(n)
	if !reflect.DeepEqual(n, &Node{ObjectMeta: ObjectMeta{Name: "n"}, TypeMeta: TypeMeta{APIVersion: GroupVersion, Kind: KindNode}}) {
		t.Errorf("got %+v", n)
	}
	r := &IPReservation{}
	SetDefaults(r)
	if r.Kind != KindIPReservation || r.APIVersion != GroupVersion {
		t.Errorf("got %+v", r)
	}
}

func TestEffectiveBGP(t *testing.T) {
	boolp := func(b bool) *bool { return &b }
	builtin := BGPConfigurationSpec{
		ASNumber: NewASNumber(64512), NodeToNodeMeshEnabled: boolp(true), ListenPort: 179,
		RouteReflectorClusterID: "244.0.0.1", LogSeverity: "Info", GracefulRestartSeconds: 120,
	}
	global := &BGPConfiguration{ObjectMeta: ObjectMeta{Name: "default"}, Spec: BGPConfigurationSpec{
		ASNumber: NewASNumber(63400), NodeToNodeMeshEnabled: boolp(false), LogSeverityScreen: "debug",
		MeshPassword: &SecretSource{SecretKeyRef: &SecretKeySelector{Name: "s", Key: "k"}},
	}}
	node := &BGPConfiguration{ObjectMeta: ObjectMeta{Name: "node.n1"}, Spec: BGPConfigurationSpec{
		ASNumber: NewASNumber(64514), ListenPort: 1179, GracefulRestartSeconds: 300, RouteReflectorClusterID: "244.0.0.2",
	}}
	cases := []struct {
		name         string
		global, node *BGPConfiguration
		want         BGPConfigurationSpec
	}{
		{"built-in", nil, nil, builtin},
		{"empty objects", &BGPConfiguration{}, &BGPConfiguration{}, builtin},
		{"global", global, nil, BGPConfigurationSpec{
			ASNumber: NewASNumber(63400), NodeToNodeMeshEnabled: boolp(false), ListenPort: 179,
			RouteReflectorClusterID: "244.0.0.1", LogSeverity: "Debug", GracefulRestartSeconds: 120,
			MeshPassword: &SecretSource{SecretKeyRef: &SecretKeySelector{Name: "s", Key: "k"}},
		}},
		{"node only", nil, node, BGPConfigurationSpec{
			ASNumber: NewASNumber(64514), NodeToNodeMeshEnabled: boolp(true), ListenPort: 1179,
			RouteReflectorClusterID: "244.0.0.2", LogSeverity: "Info", GracefulRestartSeconds: 300,
		}},
		{"node over global", global, node, BGPConfigurationSpec{
			ASNumber: NewASNumber(64514), NodeToNodeMeshEnabled: boolp(false), ListenPort: 1179,
			RouteReflectorClusterID: "244.0.0.2", LogSeverity: "Debug", GracefulRestartSeconds: 300,
			MeshPassword: &SecretSource{SecretKeyRef: &SecretKeySelector{Name: "s", Key: "k"}},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := EffectiveBGP(tc.global, tc.node)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %s\nwant %s", mustJSON(t, got), mustJSON(t, tc.want))
			}
			if got.ASNumber == nil || got.NodeToNodeMeshEnabled == nil {
				t.Error("nil pointer in result")
			}
		})
	}
	// The result shares no memory with the inputs.
	got := EffectiveBGP(global, node)
	*got.ASNumber, *got.NodeToNodeMeshEnabled, got.MeshPassword.SecretKeyRef.Name = 1, true, "changed"
	if *node.Spec.ASNumber != 64514 || *global.Spec.NodeToNodeMeshEnabled || global.Spec.MeshPassword.SecretKeyRef.Name != "s" {
		t.Error("EffectiveBGP result aliases its inputs")
	}
}
