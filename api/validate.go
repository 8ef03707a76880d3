package api

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// ErrInvalid is matched (errors.Is) by every *ValidationError.
var ErrInvalid = errors.New("invalid resource")

// FieldError is one broken rule of one field.
type FieldError struct {
	// Field is the path of the field, like "spec.blockSize" or
	// "spec.reservedCIDRs[2]".
	Field string
	// Rule says what is wrong and, where it helps, what to write instead,
	// like "19 out of range 20-32".
	Rule string
}

// String returns "<field> <rule>".
func (e FieldError) String() string {
	if e.Field == "" {
		return e.Rule
	}
	return e.Field + " " + e.Rule
}

// ValidationError lists every broken rule of one object.
type ValidationError struct {
	Kind, Name string
	Errors     []FieldError
}

// Error returns, for example,
// `IPPool "rack-0": spec.blockSize 19 out of range 20-32`, with several
// field errors joined by "; ".
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString(e.Kind)
	if e.Name != "" {
		fmt.Fprintf(&b, " %q", e.Name)
	} else {
		b.WriteString(" with no name")
	}
	b.WriteString(": ")
	for i, fe := range e.Errors {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(fe.String())
	}
	return b.String()
}

// Is reports whether target is ErrInvalid.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

// fieldErrors collects the FieldErrors of one object.
type fieldErrors []FieldError

func (l *fieldErrors) add(field, format string, args ...any) {
	*l = append(*l, FieldError{Field: field, Rule: fmt.Sprintf(format, args...)})
}

// enum checks that val is one of allowed.
func (l *fieldErrors) enum(field, val string, allowed ...string) bool {
	for _, a := range allowed {
		if val == a {
			return true
		}
	}
	if val == "" {
		l.add(field, "is empty: use one of %s", strings.Join(allowed, ", "))
	} else {
		l.add(field, "%q is not one of %s", val, strings.Join(allowed, ", "))
	}
	return false
}

func (l *fieldErrors) asNumber(field string, a *ASNumber) {
	if a != nil && *a == 0 {
		l.add(field, "0 out of range 1-4294967295")
	}
}

func (l *fieldErrors) selector(field, s string) {
	if _, err := ParseSelector(s); err != nil {
		l.add(field, "%v", err)
	}
}

func (l *fieldErrors) dottedIPv4(field, s, example string) {
	if s == "" {
		return
	}
	if a, err := netip.ParseAddr(s); err != nil || !a.Is4() {
		l.add(field, "%q is not a dotted IPv4 address (e.g. %s)", s, example)
	}
}

func (l fieldErrors) result(kind, name string) error {
	if len(l) == 0 {
		return nil
	}
	return &ValidationError{Kind: kind, Name: name, Errors: l}
}

// Validate checks one object on its own, as SetDefaults leaves it (it
// does not apply defaults: run SetDefaults first). It returns nil or a
// *ValidationError that lists every broken rule; errors.Is(err, ErrInvalid)
// holds for it. Rules that need other objects are in ValidateUpdate and
// ValidatePoolOverlap.
func Validate(obj Object) error {
	kind := kindOf(obj)
	if isNilObject(obj) || kind == "" {
		return fmt.Errorf("%w: %T is not a rhizome resource", ErrInvalid, obj)
	}
	var errs fieldErrors
	validateMeta(&errs, kind, obj)
	switch o := obj.(type) {
	case *IPPool:
		validateIPPool(&errs, &o.Spec)
	case *IPReservation:
		validateIPReservation(&errs, &o.Spec)
	case *BGPConfiguration:
		validateBGPConfiguration(&errs, o)
	case *BGPPeer:
		validateBGPPeer(&errs, &o.Spec)
	case *Node:
		validateNode(&errs, &o.Spec)
	}
	return errs.result(kind, obj.GetObjectMeta().Name)
}

func validateMeta(errs *fieldErrors, kind string, obj Object) {
	tm := obj.GetTypeMeta()
	if tm.Kind != "" && tm.Kind != kind {
		errs.add("kind", "%q does not match the object's type %s", tm.Kind, kind)
	}
	switch tm.APIVersion {
	case "", GroupVersion, CalicoGroupVersion:
	default:
		errs.add("apiVersion", "%q is not supported: use %s", tm.APIVersion, GroupVersion)
	}
	m := obj.GetObjectMeta()
	if m.Name == "" {
		errs.add("metadata.name", "is required")
	} else if msgs := validation.IsDNS1123Subdomain(m.Name); len(msgs) > 0 {
		errs.add("metadata.name", "%q is not a valid name: %s", m.Name, strings.Join(msgs, "; "))
	}
	keys := make([]string, 0, len(m.Labels))
	for k := range m.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		// IsQualifiedName and IsValidLabelValue are the label checks of
		// labels.Parse (aliases of apimachinery's api/validate/content).
		if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
			errs.add("metadata.labels", "key %q is not a valid label key: %s", k, strings.Join(msgs, "; "))
		}
		if msgs := validation.IsValidLabelValue(m.Labels[k]); len(msgs) > 0 {
			errs.add("metadata.labels", "value %q of label %q is not a valid label value: %s", m.Labels[k], k, strings.Join(msgs, "; "))
		}
	}
}

// reservedRange is a range no pool may overlap.
type reservedRange struct {
	prefix netip.Prefix
	what   string
}

func reservedRanges() []reservedRange {
	return []reservedRange{
		{netip.MustParsePrefix("169.254.0.0/16"), "the IPv4 link-local range 169.254.0.0/16 (rhizome's pod gateway 169.254.1.1 lives there)"},
		{netip.MustParsePrefix("127.0.0.0/8"), "the IPv4 loopback range 127.0.0.0/8"},
		{netip.MustParsePrefix("224.0.0.0/4"), "the IPv4 multicast range 224.0.0.0/4"},
		{netip.MustParsePrefix("fe80::/10"), "the IPv6 link-local range fe80::/10"},
		{netip.MustParsePrefix("::1/128"), "the IPv6 loopback address ::1/128"},
		{netip.MustParsePrefix("ff00::/8"), "the IPv6 multicast range ff00::/8"},
	}
}

func validateIPPool(errs *fieldErrors, s *IPPoolSpec) {
	// pool is the (masked) CIDR when it parses, so that the rules that
	// depend on the family still run when it is only not canonical.
	var pool netip.Prefix
	if s.CIDR == "" {
		errs.add("spec.cidr", "is required: set the pool's range, e.g. 10.244.0.0/16")
	} else if p, err := netip.ParsePrefix(s.CIDR); err != nil {
		errs.add("spec.cidr", "%q is not a CIDR (e.g. 10.244.0.0/16): %s", s.CIDR, stripNetipPrefix(err))
	} else if _, err := parseCanonicalPrefix(s.CIDR); err != nil {
		errs.add("spec.cidr", "%v", err)
		if !p.Addr().Is4In6() {
			pool = p.Masked()
		}
	} else {
		pool = p
	}
	v6 := pool.IsValid() && pool.Addr().Is6()

	if pool.IsValid() {
		lo, hi := 20, 32
		if v6 {
			lo, hi = 116, 128
		}
		switch {
		case s.BlockSize < lo || s.BlockSize > hi:
			errs.add("spec.blockSize", "%d out of range %d-%d", s.BlockSize, lo, hi)
		case s.BlockSize < pool.Bits():
			errs.add("spec.blockSize", "%d does not fit in the pool %s: a /%d block is larger than the /%d pool; use blockSize %d-%d",
				s.BlockSize, pool, s.BlockSize, pool.Bits(), pool.Bits(), hi)
		}
		for _, r := range reservedRanges() {
			if pool.Overlaps(r.prefix) {
				errs.add("spec.cidr", "%s overlaps %s: choose a range outside it", pool, r.what)
			}
		}
	}

	modes := []string{string(EncapAlways), string(EncapCrossSubnet), string(EncapNever)}
	ipipOK := errs.enum("spec.ipipMode", string(s.IPIPMode), modes...)
	vxlanOK := errs.enum("spec.vxlanMode", string(s.VXLANMode), modes...)
	if ipipOK && v6 && s.IPIPMode != EncapNever {
		errs.add("spec.ipipMode", "%s is not possible on an IPv6 pool: IPIP carries IPv4 only; use Never (or vxlanMode)", s.IPIPMode)
	}
	if ipipOK && vxlanOK && s.IPIPMode != EncapNever && s.VXLANMode != EncapNever {
		errs.add("spec.vxlanMode", "%s cannot be combined with ipipMode %s: choose one encapsulation and set the other to Never",
			s.VXLANMode, s.IPIPMode)
	}

	errs.selector("spec.nodeSelector", s.NodeSelector)
	errs.selector("spec.namespaceSelector", s.NamespaceSelector)
	errs.enum("spec.assignmentMode", string(s.AssignmentMode), string(AssignmentAutomatic), string(AssignmentManual))

	if len(s.AllowedUses) == 0 {
		errs.add("spec.allowedUses", "is empty: list Workload, Tunnel or both")
	}
	seen := make(map[IPUse]bool)
	for i, u := range s.AllowedUses {
		field := fmt.Sprintf("spec.allowedUses[%d]", i)
		if !errs.enum(field, string(u), string(UseWorkload), string(UseTunnel)) {
			continue
		}
		if seen[u] {
			errs.add(field, "%s is listed twice: remove the duplicate", u)
		}
		seen[u] = true
		// Tunnel on an IPv6 pool is for the IPv6 VXLAN device's address;
		// the IPIP tunnel address, IPv4 only, comes from pools with
		// ipipMode, which an IPv6 pool cannot have (spec.ipipMode above).
	}
}

func validateIPReservation(errs *fieldErrors, s *IPReservationSpec) {
	if len(s.ReservedCIDRs) == 0 {
		errs.add("spec.reservedCIDRs", "is empty: list at least one CIDR (10.0.0.0/28), address (10.0.0.5) or range (10.0.0.5-10.0.0.9)")
	}
	for i, e := range s.ReservedCIDRs {
		if _, _, err := ParseAddressRange(e); err != nil {
			errs.add(fmt.Sprintf("spec.reservedCIDRs[%d]", i), "%v", err)
		}
	}
}

func validateBGPConfiguration(errs *fieldErrors, o *BGPConfiguration) {
	if name := o.Name; name != "" && name != "default" {
		if node, ok := strings.CutPrefix(name, "node."); !ok || node == "" {
			errs.add("metadata.name", "%q must be \"default\" (cluster-wide settings) or \"node.<node-name>\" (one node's overrides)", name)
		}
	}
	s := &o.Spec
	errs.asNumber("spec.asNumber", s.ASNumber)
	if s.ListenPort < 0 || s.ListenPort > 65535 {
		errs.add("spec.listenPort", "%d out of range 1-65535 (or 0 for the default, 179)", s.ListenPort)
	}
	errs.dottedIPv4("spec.routeReflectorClusterID", s.RouteReflectorClusterID, DefaultRouteReflectorClusterID)
	for _, f := range []struct{ field, val string }{
		{"spec.logSeverity", s.LogSeverity},
		{"spec.logSeverityScreen", s.LogSeverityScreen},
	} {
		if f.val != "" && !isLogSeverity(canonical(f.val, logSeverities()...)) {
			errs.add(f.field, "%q is not one of %s", f.val, strings.Join(logSeverities(), ", "))
		}
	}
	if s.GracefulRestartSeconds < 0 || s.GracefulRestartSeconds > 4095 {
		errs.add("spec.gracefulRestartSeconds", "%d out of range 0-4095", s.GracefulRestartSeconds)
	}
	validateSecret(errs, "spec.meshPassword", s.MeshPassword)
}

func isLogSeverity(s string) bool {
	for _, l := range logSeverities() {
		if l == s {
			return true
		}
	}
	return false
}

func validateSecret(errs *fieldErrors, field string, s *SecretSource) {
	if s == nil {
		return
	}
	hasRef, hasFile := s.SecretKeyRef != nil, s.File != ""
	switch {
	case hasRef && hasFile:
		errs.add(field, "sets both secretKeyRef and file: set exactly one")
	case !hasRef && !hasFile:
		errs.add(field, "sets neither secretKeyRef nor file: set one (a Secret's name and key, or an absolute path on the node)")
	}
	if hasRef {
		ref := s.SecretKeyRef
		if ref.Name == "" {
			errs.add(field+".secretKeyRef.name", "is required: the name of a Secret in the agent's namespace")
		} else if msgs := validation.IsDNS1123Subdomain(ref.Name); len(msgs) > 0 {
			errs.add(field+".secretKeyRef.name", "%q is not a valid Secret name: %s", ref.Name, strings.Join(msgs, "; "))
		}
		if ref.Key == "" {
			errs.add(field+".secretKeyRef.key", "is required: the key in the Secret that holds the password")
		} else if msgs := validation.IsConfigMapKey(ref.Key); len(msgs) > 0 {
			errs.add(field+".secretKeyRef.key", "%q is not a valid Secret key: %s", ref.Key, strings.Join(msgs, "; "))
		}
	}
	if hasFile && (!strings.HasPrefix(s.File, "/") || strings.ContainsRune(s.File, 0)) {
		errs.add(field+".file", "%q is not an absolute path: write the full path on the node, e.g. /etc/rhizome/bgp-password", s.File)
	}
}

func validateBGPPeer(errs *fieldErrors, s *BGPPeerSpec) {
	hasIP, hasSel := s.PeerIP != "", s.PeerSelector != ""
	switch {
	case hasIP && hasSel:
		errs.add("spec.peerSelector", "cannot be combined with peerIP: set peerIP (with asNumber) for an external speaker, or peerSelector for rhizome nodes")
	case !hasIP && !hasSel:
		errs.add("spec.peerIP", "is required unless peerSelector is set: set peerIP and asNumber for an external speaker, or peerSelector to peer with rhizome nodes")
	}
	if hasIP {
		if _, _, err := ParsePeerIP(s.PeerIP); err != nil {
			errs.add("spec.peerIP", "%v", err)
		}
		if s.ASNumber == nil {
			errs.add("spec.asNumber", "is required with peerIP: set the AS number of the speaker at %s", s.PeerIP)
		}
	} else if hasSel && s.ASNumber != nil {
		errs.add("spec.asNumber", "must not be set with peerSelector: the selected nodes' own AS numbers are used")
	}
	errs.asNumber("spec.asNumber", s.ASNumber)
	if s.Node != "" {
		if s.NodeSelector != "" {
			errs.add("spec.nodeSelector", "cannot be combined with node: set node for one node, or nodeSelector for several")
		}
		if msgs := validation.IsDNS1123Subdomain(s.Node); len(msgs) > 0 {
			errs.add("spec.node", "%q is not a valid node name: %s", s.Node, strings.Join(msgs, "; "))
		}
	}
	errs.selector("spec.nodeSelector", s.NodeSelector)
	errs.selector("spec.peerSelector", s.PeerSelector)

	switch h := s.HoldSeconds; {
	case h < 0 || h > 65535:
		errs.add("spec.holdSeconds", "%d out of range 3-65535 (or 0 for the default, 90)", h)
	case h == 1 || h == 2:
		errs.add("spec.holdSeconds", "%d is too short: BGP hold times are 0 (the default, 90) or at least 3 seconds (RFC 4271)", h)
	}
	switch k := s.KeepaliveSeconds; {
	case k < 0 || k > 65535:
		errs.add("spec.keepaliveSeconds", "%d out of range 0-65535", k)
	case k > 0 && s.HoldSeconds > 0 && k >= s.HoldSeconds:
		errs.add("spec.keepaliveSeconds", "%d must be less than holdSeconds %d (usually a third of it)", k, s.HoldSeconds)
	}
	if g := s.GracefulRestartSeconds; g < 0 || g > 4095 {
		errs.add("spec.gracefulRestartSeconds", "%d out of range 0-4095", g)
	}
	errs.enum("spec.nextHopMode", string(s.NextHopMode), string(NextHopAuto), string(NextHopSelf), string(NextHopKeep))
	errs.enum("spec.sourceAddress", s.SourceAddress, SourceAddressUseNodeIP, SourceAddressNone)
	validateSecret(errs, "spec.password", s.Password)
}

func validateNode(errs *fieldErrors, s *NodeSpec) {
	if t := s.IPv4VXLANTunnelAddr; t != "" {
		if a, err := netip.ParseAddr(t); err != nil || !a.Is4() {
			errs.add("spec.ipv4VXLANTunnelAddr", "%q is not an IPv4 address (e.g. 10.244.0.1)", t)
		}
	}
	if t := s.IPv6VXLANTunnelAddr; t != "" {
		if a, err := netip.ParseAddr(t); err != nil || !a.Is6() || a.Is4In6() || a.Zone() != "" {
			errs.add("spec.ipv6VXLANTunnelAddr", "%q is not an IPv6 address (e.g. fd00:10:244::1)", t)
		}
	}
	validateMAC(errs, "spec.vxlanTunnelMACAddr", s.VXLANTunnelMACAddr)
	validateMAC(errs, "spec.vxlanTunnelMACAddrV6", s.VXLANTunnelMACAddrV6)
	b := s.BGP
	if b == nil {
		return
	}
	if b.IPv4Address != "" {
		if p, err := netip.ParsePrefix(b.IPv4Address); err != nil || !p.Addr().Is4() {
			errs.add("spec.bgp.ipv4Address", "%q is not an IPv4 address in CIDR form (e.g. 10.0.0.5/24)", b.IPv4Address)
		}
	}
	if b.IPv6Address != "" {
		if p, err := netip.ParsePrefix(b.IPv6Address); err != nil || !p.Addr().Is6() || p.Addr().Is4In6() {
			errs.add("spec.bgp.ipv6Address", "%q is not an IPv6 address in CIDR form (e.g. fd00::5/64)", b.IPv6Address)
		}
	}
	errs.asNumber("spec.bgp.asNumber", b.ASNumber)
	errs.dottedIPv4("spec.bgp.routeReflectorClusterID", b.RouteReflectorClusterID, DefaultRouteReflectorClusterID)
	if t := b.IPv4TunnelAddr; t != "" {
		if a, err := netip.ParseAddr(t); err != nil || !a.Is4() {
			errs.add("spec.bgp.ipv4TunnelAddr", "%q is not an IPv4 address (e.g. 10.244.0.1)", t)
		}
	}
}

// validateMAC accepts a unicast Ethernet MAC address in the colon form the
// kernel prints (02:5a:11:3c:0e:9f): the VXLAN device's address, which
// other nodes write into their neighbour and forwarding entries.
func validateMAC(errs *fieldErrors, field, mac string) {
	if mac == "" {
		return
	}
	hw, err := net.ParseMAC(mac)
	switch {
	case err != nil || len(hw) != 6:
		errs.add(field, "%q is not an Ethernet MAC address (e.g. 02:5a:11:3c:0e:9f)", mac)
	case hw[0]&1 != 0:
		errs.add(field, "%q is a multicast MAC address: a device needs a unicast one (first byte even)", mac)
	case bytes.Equal(hw, make(net.HardwareAddr, 6)):
		errs.add(field, "%q is the all-zero MAC address: leave the field empty for the agent to fill", mac)
	}
}
