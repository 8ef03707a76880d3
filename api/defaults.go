package api

import (
	"net/netip"
	"strings"
)

// Built-in BGP defaults, used by EffectiveBGP where neither the global nor
// the node's BGPConfiguration sets a value.
const (
	DefaultASNumber                = ASNumber(64512)
	DefaultListenPort              = 179
	DefaultRouteReflectorClusterID = "244.0.0.1"
	DefaultLogSeverity             = "Info"
	DefaultGracefulRestartSeconds  = 120
)

// Default block sizes of IPv4 and IPv6 pools.
const (
	DefaultBlockSizeV4 = 26
	DefaultBlockSizeV6 = 122
)

// logSeverities are the log severities of a BGPConfiguration.
func logSeverities() []string { return []string{"Debug", "Info", "Warning", "Error", "Fatal"} }

// SetDefaults fills in the defaults of obj in place. It is the one place
// defaults are applied, and it is idempotent. Values of enumerations are
// accepted in any case and normalised ("always" becomes Always); values it
// does not know stay as written, for Validate to report.
//
//   - every kind: apiVersion rhizome.io/v1 and the kind.
//   - IPPool: blockSize 26 (IPv4) or 122 (IPv6) when 0 and the CIDR
//     parses; ipipMode and vxlanMode Never; assignmentMode Automatic;
//     allowedUses Workload and Tunnel, for IPv6 pools too (as Calico's:
//     Tunnel addresses of an IPv6 pool are the IPv6 VXLAN device's);
//     nodeSelector "all()".
//   - BGPConfiguration: Calico's logSeverityScreen moves into logSeverity.
//     Cluster-wide defaults are not stored in the object: see EffectiveBGP.
//   - BGPPeer: nextHopMode Auto, sourceAddress UseNodeIP.
//   - Node: nothing beyond apiVersion and kind.
func SetDefaults(obj Object) {
	kind := kindOf(obj)
	if kind == "" || isNilObject(obj) {
		return
	}
	*obj.GetTypeMeta() = TypeMeta{APIVersion: GroupVersion, Kind: kind}
	switch o := obj.(type) {
	case *IPPool:
		defaultIPPool(&o.Spec)
	case *BGPConfiguration:
		s := &o.Spec
		if s.LogSeverity == "" {
			s.LogSeverity = s.LogSeverityScreen
		}
		s.LogSeverityScreen = ""
		s.LogSeverity = canonical(s.LogSeverity, logSeverities()...)
	case *BGPPeer:
		s := &o.Spec
		s.NextHopMode = NextHopMode(canonical(string(s.NextHopMode), string(NextHopAuto), string(NextHopSelf), string(NextHopKeep)))
		if s.NextHopMode == "" {
			s.NextHopMode = NextHopAuto
		}
		s.SourceAddress = canonical(s.SourceAddress, SourceAddressUseNodeIP, SourceAddressNone)
		if s.SourceAddress == "" {
			s.SourceAddress = SourceAddressUseNodeIP
		}
	}
}

func defaultIPPool(s *IPPoolSpec) {
	p, err := netip.ParsePrefix(s.CIDR)
	parsed := err == nil
	if s.BlockSize == 0 && parsed {
		if p.Addr().Is4() {
			s.BlockSize = DefaultBlockSizeV4
		} else {
			s.BlockSize = DefaultBlockSizeV6
		}
	}
	s.IPIPMode = defaultEncap(s.IPIPMode)
	s.VXLANMode = defaultEncap(s.VXLANMode)
	s.AssignmentMode = AssignmentMode(canonical(string(s.AssignmentMode), string(AssignmentAutomatic), string(AssignmentManual)))
	if s.AssignmentMode == "" {
		s.AssignmentMode = AssignmentAutomatic
	}
	if len(s.AllowedUses) == 0 {
		s.AllowedUses = []IPUse{UseWorkload, UseTunnel}
	} else {
		for i, u := range s.AllowedUses {
			s.AllowedUses[i] = IPUse(canonical(string(u), string(UseWorkload), string(UseTunnel)))
		}
	}
	if strings.TrimSpace(s.NodeSelector) == "" {
		s.NodeSelector = "all()"
	}
}

func defaultEncap(m EncapMode) EncapMode {
	m = EncapMode(canonical(string(m), string(EncapAlways), string(EncapCrossSubnet), string(EncapNever)))
	if m == "" {
		return EncapNever
	}
	return m
}

// canonical returns the entry of values equal to v ignoring case, or v.
func canonical(v string, values ...string) string {
	for _, c := range values {
		if strings.EqualFold(v, c) {
			return c
		}
	}
	return v
}

// EffectiveBGP returns the BGP settings a node runs with: the built-in
// defaults (AS 64512, node-to-node mesh on, listen port 179, route
// reflector cluster ID 244.0.0.1, log severity Info, graceful restart
// 120 s), overridden by what global (the "default" BGPConfiguration) sets,
// overridden by what node (the node's "node.<name>" BGPConfiguration) sets.
// Either may be nil.
//
// ASNumber and NodeToNodeMeshEnabled are always non-nil in the result.
// MeshPassword stays nil when neither object sets one (there is no default
// password). The result shares no memory with the inputs.
func EffectiveBGP(global, node *BGPConfiguration) BGPConfigurationSpec {
	mesh := true
	eff := BGPConfigurationSpec{
		ASNumber:                NewASNumber(uint32(DefaultASNumber)),
		NodeToNodeMeshEnabled:   &mesh,
		ListenPort:              DefaultListenPort,
		RouteReflectorClusterID: DefaultRouteReflectorClusterID,
		LogSeverity:             DefaultLogSeverity,
		GracefulRestartSeconds:  DefaultGracefulRestartSeconds,
	}
	for _, c := range []*BGPConfiguration{global, node} {
		if c == nil {
			continue
		}
		s := c.Spec
		if s.ASNumber != nil {
			eff.ASNumber = NewASNumber(uint32(*s.ASNumber))
		}
		if s.NodeToNodeMeshEnabled != nil {
			v := *s.NodeToNodeMeshEnabled
			eff.NodeToNodeMeshEnabled = &v
		}
		if s.ListenPort != 0 {
			eff.ListenPort = s.ListenPort
		}
		if s.RouteReflectorClusterID != "" {
			eff.RouteReflectorClusterID = s.RouteReflectorClusterID
		}
		if sev := s.LogSeverity; sev != "" {
			eff.LogSeverity = canonical(sev, logSeverities()...)
		} else if sev := s.LogSeverityScreen; sev != "" {
			eff.LogSeverity = canonical(sev, logSeverities()...)
		}
		if s.GracefulRestartSeconds != 0 {
			eff.GracefulRestartSeconds = s.GracefulRestartSeconds
		}
		if s.MeshPassword != nil {
			eff.MeshPassword = copySecret(s.MeshPassword)
		}
	}
	return eff
}

// copySecret returns a copy of s that shares no memory with it.
func copySecret(s *SecretSource) *SecretSource {
	if s == nil {
		return nil
	}
	c := *s
	if s.SecretKeyRef != nil {
		ref := *s.SecretKeyRef
		c.SecretKeyRef = &ref
	}
	return &c
}
