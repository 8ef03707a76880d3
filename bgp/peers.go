// Package bgp computes which BGP sessions and advertisements a rhizome node
// should have (pure functions over api values) and runs them with an
// embedded GoBGP speaker that reconciles to that desired state.
//
// The package never reads the datastore or Kubernetes: the daemon passes in
// plain values (nodes, BGP configurations, BGP peers, blocks) and a function
// that resolves password sources.
package bgp

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/rhizome-net/rhizome/api"
)

// PeerType says why a session exists; it is what `rhizomectl node status`
// prints in its PEER TYPE column.
type PeerType string

// Peer types.
const (
	TypeMesh     PeerType = "node-to-node mesh"
	TypeRR       PeerType = "route reflector"
	TypeRRClient PeerType = "route reflector client"
	TypeGlobal   PeerType = "global"
	TypeNode     PeerType = "node specific"
)

// RouteReflectorLabel on a node makes it a route reflector with the
// BGPConfiguration's cluster ID when its spec sets none.
const RouteReflectorLabel = "rhizome.io/route-reflector"

// DefaultPort is the BGP port a peer is dialled on when nothing else is set.
const DefaultPort = 179

// MultihopTTL is the TTL of eBGP sessions to peers that are not on one of
// this node's subnets.
const MultihopTTL = 255

// ErrNoNodeAddress is returned when the node itself has no BGP address.
var ErrNoNodeAddress = errors.New("node has no BGP address")

// Peer is one BGP session this node should have.
type Peer struct {
	// Address and Port the peer listens on.
	Address netip.Addr `json:"address"`
	Port    uint16     `json:"port"`
	// AS of the peer and our own AS on this session.
	AS      uint32   `json:"as"`
	LocalAS uint32   `json:"localAS"`
	Type    PeerType `json:"type"`
	// Node is the rhizome node behind Address, empty for external peers.
	Node string `json:"node,omitempty"`
	// BGPPeer names the BGPPeer resource that asked for the session, empty
	// for the mesh and automatic route reflector sessions.
	BGPPeer string `json:"bgpPeer,omitempty"`
	// Passive sessions wait for the peer to connect.
	Passive bool `json:"passive,omitempty"`
	// RouteReflectorClient marks the peer as a client of this node, which is
	// a route reflector with ClusterID.
	RouteReflectorClient bool   `json:"rrClient,omitempty"`
	ClusterID            string `json:"clusterID,omitempty"`
	// OwnRoutesOnly accepts from this peer only the routes it originates
	// (next hop = its address). It is set between route reflectors that
	// share a cluster ID, which must not accept each other's reflections.
	OwnRoutesOnly bool `json:"ownRoutesOnly,omitempty"`
	// EBGP is true when AS and LocalAS differ; Multihop when such a peer is
	// not on one of this node's subnets (TTL MultihopTTL).
	EBGP     bool `json:"ebgp,omitempty"`
	Multihop bool `json:"multihop,omitempty"`
	// Password for TCP MD5, resolved from PasswordSource. Never logged.
	Password       string `json:"password,omitempty"`
	PasswordSource string `json:"passwordSource,omitempty"`
	// Timers in seconds; 0 leaves GoBGP's defaults (keepalive 30, hold 90).
	KeepaliveSeconds int `json:"keepaliveSeconds,omitempty"`
	HoldSeconds      int `json:"holdSeconds,omitempty"`
	// GracefulRestartSeconds the peer keeps our routes while we restart; 0
	// turns graceful restart off for the session.
	GracefulRestartSeconds int             `json:"gracefulRestartSeconds"`
	NextHopMode            api.NextHopMode `json:"nextHopMode,omitempty"`
	// SourceAddress the session is opened from; invalid lets the kernel
	// choose.
	SourceAddress netip.Addr `json:"sourceAddress,omitzero"`
}

// String describes the peer for logs and errors; it never shows the password.
func (p Peer) String() string {
	return fmt.Sprintf("%s AS %d (%s)", netip.AddrPortFrom(p.Address, p.Port), p.AS, p.Type)
}

// PasswordResolver returns the password a secret source names. The daemon
// passes one that reads Kubernetes Secrets and files.
type PasswordResolver func(src api.SecretSource) (string, error)

// Topology is everything the peer computation looks at.
type Topology struct {
	// Self is the name of this node.
	Self string
	// Nodes are all rhizome nodes, Self included.
	Nodes []api.Node
	// Configs are the BGPConfigurations: "default" and any "node.<name>".
	Configs []api.BGPConfiguration
	// Peers are all BGPPeer resources.
	Peers []api.BGPPeer
	// Password resolves password sources; nil refuses any password.
	Password PasswordResolver
}

// nodeInfo is what the computation needs to know about one node.
type nodeInfo struct {
	name      string
	labels    labels.Set
	v4, v6    netip.Prefix // the node's addresses in CIDR form; invalid if unset
	as        uint32
	port      uint16
	clusterID string // non-empty for route reflectors
	bgp       api.BGPConfigurationSpec
}

func (n *nodeInfo) addr(v6 bool) netip.Prefix {
	if v6 {
		return n.v6
	}
	return n.v4
}

// Local is this node's own BGP identity.
type Local struct {
	Name     string
	RouterID netip.Addr
	AS       uint32
	// Addresses the speaker listens on: the node's IPv4 and IPv6 addresses.
	Addresses  []netip.Addr
	ListenPort int
	// GracefulRestartSeconds from the BGPConfiguration (default 120).
	GracefulRestartSeconds int
	// ClusterID is set when the node is a route reflector.
	ClusterID string
}

// LocalConfig returns this node's BGP identity: router ID = its IPv4
// address, AS from the Node, else its BGPConfiguration, else 64512.
func LocalConfig(t Topology) (Local, error) {
	self, _, err := resolveNodes(t)
	if err != nil {
		return Local{}, err
	}
	l := Local{
		Name:                   self.name,
		RouterID:               self.v4.Addr(),
		AS:                     self.as,
		ListenPort:             int(self.port),
		GracefulRestartSeconds: self.bgp.GracefulRestartSeconds,
		ClusterID:              self.clusterID,
	}
	for _, p := range []netip.Prefix{self.v4, self.v6} {
		if p.IsValid() {
			l.Addresses = append(l.Addresses, p.Addr())
		}
	}
	return l, nil
}

// configsByName splits the BGPConfigurations into the global one and the
// per-node overrides.
func configsByName(cfgs []api.BGPConfiguration) (global *api.BGPConfiguration, perNode map[string]*api.BGPConfiguration) {
	perNode = make(map[string]*api.BGPConfiguration)
	for i := range cfgs {
		c := &cfgs[i]
		if c.Name == "default" {
			global = c
		} else if n, ok := strings.CutPrefix(c.Name, "node."); ok {
			perNode[n] = c
		}
	}
	return global, perNode
}

// resolveNodes turns the api nodes into nodeInfo, in name order, and
// returns the one that is Self.
func resolveNodes(t Topology) (*nodeInfo, []*nodeInfo, error) {
	global, perNode := configsByName(t.Configs)
	var self *nodeInfo
	all := make([]*nodeInfo, 0, len(t.Nodes))
	for i := range t.Nodes {
		n := &t.Nodes[i]
		eff := api.EffectiveBGP(global, perNode[n.Name])
		ni := &nodeInfo{name: n.Name, labels: labels.Set(n.Labels), bgp: eff, as: uint32(*eff.ASNumber), port: uint16(eff.ListenPort)}
		if b := n.Spec.BGP; b != nil {
			var err error
			if ni.v4, err = parseNodeAddr(b.IPv4Address); err != nil {
				return nil, nil, fmt.Errorf("node %q spec.bgp.ipv4Address: %w", n.Name, err)
			}
			if ni.v6, err = parseNodeAddr(b.IPv6Address); err != nil {
				return nil, nil, fmt.Errorf("node %q spec.bgp.ipv6Address: %w", n.Name, err)
			}
			if b.ASNumber != nil {
				ni.as = uint32(*b.ASNumber)
			}
			ni.clusterID = b.RouteReflectorClusterID
		}
		if ni.clusterID == "" && n.Labels[RouteReflectorLabel] == "true" {
			ni.clusterID = eff.RouteReflectorClusterID
		}
		if n.Name == t.Self {
			self = ni
		}
		all = append(all, ni)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].name < all[j].name })
	if self == nil {
		return nil, nil, fmt.Errorf("node %q is not among the %d nodes: the agent must register its Node before computing BGP peers", t.Self, len(t.Nodes))
	}
	if !self.v4.IsValid() {
		return nil, nil, fmt.Errorf("node %q: %w: set spec.bgp.ipv4Address (the agent autodetects it on start)", t.Self, ErrNoNodeAddress)
	}
	return self, all, nil
}

func parseNodeAddr(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address in CIDR form (10.0.0.5/24): %w", s, err)
	}
	return p, nil
}

// Peers returns the sessions node t.Self should have, sorted by address.
//
//   - Node-to-node mesh (nodeToNodeMeshEnabled in the "default"
//     BGPConfiguration, on by default): one session with every other node,
//     per address family both have; the lower address dials, the other side
//     is passive.
//   - Mesh off: nodes with a routeReflectorClusterID (or the label
//     rhizome.io/route-reflector=true) are route reflectors. Every other node
//     peers with every route reflector, route reflectors peer with each
//     other, and a route reflector marks non-reflector peers as its clients
//     with its cluster ID.
//   - BGPPeers that apply to the node (node, nodeSelector, or neither for a
//     global peer) add sessions to peerIP, or to the rhizome nodes
//     peerSelector selects. A peerSelector peering works both ways: a node
//     selected by peerSelector peers back with the nodes of nodeSelector.
//
// Where several sources give the same address, a node-specific BGPPeer
// wins over a global one, which wins over the mesh and the automatic route
// reflector sessions. The mesh password (meshPassword) protects mesh and
// automatic route reflector sessions.
func Peers(t Topology) ([]Peer, error) {
	self, all, err := resolveNodes(t)
	if err != nil {
		return nil, err
	}
	global, _ := configsByName(t.Configs)
	meshOn := *api.EffectiveBGP(global, nil).NodeToNodeMeshEnabled

	b := &peerBuilder{self: self, password: t.Password, byAddr: make(map[netip.Addr]int)}
	// Explicit peers first: the first source of an address wins.
	for _, wantType := range []PeerType{TypeNode, TypeGlobal} {
		for i := range t.Peers {
			bp := &t.Peers[i]
			if peerType(bp) != wantType {
				continue
			}
			if err := b.addBGPPeer(bp, all); err != nil {
				return nil, err
			}
		}
	}
	for _, n := range all {
		if n == self {
			continue
		}
		var typ PeerType
		switch {
		case meshOn:
			typ = TypeMesh
		case self.clusterID != "" && n.clusterID == "":
			typ = TypeRRClient
		case n.clusterID != "":
			typ = TypeRR
		default:
			continue // two clients: they hear each other through the reflectors
		}
		for _, v6 := range []bool{false, true} {
			if err := b.addNode(n, v6, typ, nil); err != nil {
				return nil, err
			}
		}
	}
	sort.Slice(b.peers, func(i, j int) bool { return b.peers[i].Address.Less(b.peers[j].Address) })
	return b.peers, nil
}

// peerType is the type of the sessions a BGPPeer asks for.
func peerType(bp *api.BGPPeer) PeerType {
	if bp.Spec.Node == "" && strings.TrimSpace(bp.Spec.NodeSelector) == "" {
		return TypeGlobal
	}
	return TypeNode
}

type peerBuilder struct {
	self     *nodeInfo
	password PasswordResolver
	peers    []Peer
	byAddr   map[netip.Addr]int
}

// appliesTo says whether the BGPPeer's node or nodeSelector selects n.
func appliesTo(bp *api.BGPPeer, n *nodeInfo) (bool, error) {
	if bp.Spec.Node != "" {
		return bp.Spec.Node == n.name, nil
	}
	sel, err := api.ParseSelector(bp.Spec.NodeSelector)
	if err != nil {
		return false, fmt.Errorf("BGPPeer %q spec.nodeSelector: %w", bp.Name, err)
	}
	return sel.Matches(n.labels), nil
}

func (b *peerBuilder) addBGPPeer(bp *api.BGPPeer, all []*nodeInfo) error {
	selfApplies, err := appliesTo(bp, b.self)
	if err != nil {
		return err
	}
	typ := peerType(bp)
	if bp.Spec.PeerSelector == "" {
		if !selfApplies || bp.Spec.PeerIP == "" {
			return nil
		}
		return b.addExternal(bp, typ)
	}
	peerSel, err := api.ParseSelector(bp.Spec.PeerSelector)
	if err != nil {
		return fmt.Errorf("BGPPeer %q spec.peerSelector: %w", bp.Name, err)
	}
	selfSelected := peerSel.Matches(b.self.labels)
	for _, n := range all {
		if n == b.self {
			continue
		}
		forward := selfApplies && peerSel.Matches(n.labels)
		backward := false
		if selfSelected && !forward {
			if backward, err = appliesTo(bp, n); err != nil {
				return err
			}
		}
		if !forward && !backward {
			continue
		}
		for _, v6 := range []bool{false, true} {
			if err := b.addNode(n, v6, typ, bp); err != nil {
				return err
			}
		}
	}
	return nil
}

// applySpec copies a BGPPeer's session settings onto p.
func applySpec(p *Peer, s *api.BGPPeerSpec) {
	p.KeepaliveSeconds = s.KeepaliveSeconds
	p.HoldSeconds = s.HoldSeconds
	if s.GracefulRestartSeconds != 0 {
		p.GracefulRestartSeconds = s.GracefulRestartSeconds
	}
	p.NextHopMode = s.NextHopMode
	if s.SourceAddress == api.SourceAddressNone {
		p.SourceAddress = netip.Addr{}
	}
}

func (b *peerBuilder) addExternal(bp *api.BGPPeer, typ PeerType) error {
	addr, port, err := api.ParsePeerIP(bp.Spec.PeerIP)
	if err != nil {
		return fmt.Errorf("BGPPeer %q spec.peerIP: %w", bp.Name, err)
	}
	if bp.Spec.ASNumber == nil || *bp.Spec.ASNumber == 0 {
		return fmt.Errorf("BGPPeer %q: spec.asNumber is required with peerIP: set the AS number of the speaker at %s", bp.Name, addr)
	}
	local := b.self.addr(addr.Is6())
	if !local.IsValid() {
		return nil // no address of that family here: nothing to peer from
	}
	if addr == local.Addr() {
		return nil // the node itself
	}
	if port == 0 {
		port = DefaultPort
	}
	p := Peer{
		Address:                addr,
		Port:                   port,
		AS:                     uint32(*bp.Spec.ASNumber),
		LocalAS:                b.self.as,
		Type:                   typ,
		BGPPeer:                bp.Name,
		GracefulRestartSeconds: b.self.bgp.GracefulRestartSeconds,
		SourceAddress:          local.Addr(),
	}
	p.EBGP = p.AS != p.LocalAS
	p.Multihop = p.EBGP && !local.Masked().Contains(addr)
	if err := b.setPassword(&p, bp.Spec.Password, "BGPPeer "+bp.Name); err != nil {
		return err
	}
	applySpec(&p, &bp.Spec)
	// Between rhizome nodes the lower address dials; passive applies to
	// external peers only, where it says who opens the session.
	p.Passive = bp.Spec.Passive
	b.add(p)
	return nil
}

// addNode adds a session with rhizome node n in one address family, if
// both nodes have an address of it. bp is the BGPPeer that asks for it, nil
// for the mesh and automatic route reflector sessions.
func (b *peerBuilder) addNode(n *nodeInfo, v6 bool, typ PeerType, bp *api.BGPPeer) error {
	local, remote := b.self.addr(v6), n.addr(v6)
	if !local.IsValid() || !remote.IsValid() {
		return nil
	}
	if _, dup := b.byAddr[remote.Addr()]; dup {
		return nil
	}
	p := Peer{
		Address:                remote.Addr(),
		Port:                   n.port,
		AS:                     n.as,
		LocalAS:                b.self.as,
		Type:                   typ,
		Node:                   n.name,
		Passive:                local.Addr().Compare(remote.Addr()) > 0,
		GracefulRestartSeconds: b.self.bgp.GracefulRestartSeconds,
		SourceAddress:          local.Addr(),
	}
	if typ != TypeMesh && b.self.clusterID != "" {
		switch n.clusterID {
		case "":
			p.RouteReflectorClient = true
			p.ClusterID = b.self.clusterID
		case b.self.clusterID:
			p.OwnRoutesOnly = true
		}
	}
	p.EBGP = p.AS != p.LocalAS
	p.Multihop = p.EBGP && !local.Masked().Contains(remote.Addr())
	pw, what := b.self.bgp.MeshPassword, "the mesh password (BGPConfiguration spec.meshPassword)"
	if bp != nil {
		p.BGPPeer = bp.Name
		pw, what = bp.Spec.Password, "BGPPeer "+bp.Name
		applySpec(&p, &bp.Spec)
	}
	if err := b.setPassword(&p, pw, what); err != nil {
		return err
	}
	b.add(p)
	return nil
}

func (b *peerBuilder) setPassword(p *Peer, src *api.SecretSource, what string) error {
	if src == nil {
		return nil
	}
	switch {
	case src.SecretKeyRef != nil:
		p.PasswordSource = fmt.Sprintf("secret %s key %s", src.SecretKeyRef.Name, src.SecretKeyRef.Key)
	default:
		p.PasswordSource = "file " + src.File
	}
	if b.password == nil {
		return fmt.Errorf("%s: password from %s: no password resolver given", what, p.PasswordSource)
	}
	pw, err := b.password(*src)
	if err != nil {
		return fmt.Errorf("%s: password from %s: %w", what, p.PasswordSource, err)
	}
	if pw == "" {
		return fmt.Errorf("%s: password from %s is empty: put the password there, or remove the password setting", what, p.PasswordSource)
	}
	p.Password = pw
	return nil
}

func (b *peerBuilder) add(p Peer) {
	if _, dup := b.byAddr[p.Address]; dup {
		return
	}
	b.byAddr[p.Address] = len(b.peers)
	b.peers = append(b.peers, p)
}
