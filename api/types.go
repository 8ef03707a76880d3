// Package api defines rhizome's resources (apiVersion rhizome.io/v1): their
// types, defaults, validation, selectors and YAML/JSON decoding.
//
// The package depends on the standard library and apimachinery's label
// selectors only, so every other package (and every binary) can use it.
package api

// Group and version of every rhizome resource.
const (
	GroupVersion = "rhizome.io/v1"
	// CalicoGroupVersion is accepted on input so that resources written for
	// Calico apply unchanged; stored objects always carry GroupVersion.
	CalicoGroupVersion = "projectcalico.org/v3"
)

// Kinds.
const (
	KindIPPool           = "IPPool"
	KindIPReservation    = "IPReservation"
	KindBGPConfiguration = "BGPConfiguration"
	KindBGPPeer          = "BGPPeer"
	KindNode             = "Node"
)

// TypeMeta names the schema of an object.
type TypeMeta struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`
}

// ObjectMeta is the part of every resource that identifies it.
type ObjectMeta struct {
	Name        string            `json:"name"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	// ResourceVersion is the datastore revision the object was read at. It is
	// set by the store on reads; on writes a non-empty value makes the write
	// conditional on it.
	ResourceVersion string `json:"resourceVersion,omitempty"`
	// CreationTimestamp is set by the store when the object is created
	// (RFC 3339, UTC).
	CreationTimestamp string `json:"creationTimestamp,omitempty"`
	// UID is set by the store when the object is created.
	UID string `json:"uid,omitempty"`
}

// Object is implemented by every resource type.
type Object interface {
	// GetObjectMeta returns the object's metadata for reading and writing.
	GetObjectMeta() *ObjectMeta
	// GetTypeMeta returns the object's apiVersion and kind for reading and writing.
	GetTypeMeta() *TypeMeta
}

func (m *ObjectMeta) GetObjectMeta() *ObjectMeta { return m }
func (t *TypeMeta) GetTypeMeta() *TypeMeta       { return t }

// EncapMode is the IPIP or VXLAN encapsulation mode of a pool.
type EncapMode string

// Encapsulation modes.
const (
	EncapAlways      EncapMode = "Always"
	EncapCrossSubnet EncapMode = "CrossSubnet"
	EncapNever       EncapMode = "Never"
)

// AssignmentMode says whether a pool serves automatic requests.
type AssignmentMode string

// Assignment modes.
const (
	// AssignmentAutomatic pools serve any request whose selectors match.
	AssignmentAutomatic AssignmentMode = "Automatic"
	// AssignmentManual pools serve only requests that name them or ask for
	// an address inside them.
	AssignmentManual AssignmentMode = "Manual"
)

// IPUse is what an address from a pool may be used for.
type IPUse string

// Address uses.
const (
	UseWorkload IPUse = "Workload"
	UseTunnel   IPUse = "Tunnel"
)

// IPPool is a range of addresses that rhizome cuts into blocks and hands out.
type IPPool struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata"`
	Spec       IPPoolSpec `json:"spec"`
}

// IPPoolSpec is the desired state of an IPPool.
type IPPoolSpec struct {
	// CIDR of the pool, in canonical form (required, immutable).
	CIDR string `json:"cidr"`
	// BlockSize is the prefix length of the blocks the pool is cut into
	// (v4 default 26, range 20-32; v6 default 122, range 116-128; immutable).
	BlockSize int `json:"blockSize,omitempty"`
	// IPIPMode: Always, CrossSubnet or Never (default). IPv4 only.
	IPIPMode EncapMode `json:"ipipMode,omitempty"`
	// VXLANMode: Always, CrossSubnet or Never (default). Not with IPIP.
	VXLANMode EncapMode `json:"vxlanMode,omitempty"`
	// NATOutgoing masquerades traffic from the pool to destinations outside
	// all pools.
	NATOutgoing bool `json:"natOutgoing,omitempty"`
	// Disabled pools hand out no new addresses; existing ones stay.
	Disabled bool `json:"disabled,omitempty"`
	// NodeSelector selects the nodes that draw from this pool (empty or
	// all() = every node). Kubernetes label-selector syntax, or the Calico
	// expression forms (see ParseSelector).
	NodeSelector string `json:"nodeSelector,omitempty"`
	// NamespaceSelector selects the namespaces whose pods draw from this
	// pool (empty = every namespace).
	NamespaceSelector string `json:"namespaceSelector,omitempty"`
	// AssignmentMode: Automatic (default) or Manual.
	AssignmentMode AssignmentMode `json:"assignmentMode,omitempty"`
	// AllowedUses of addresses from the pool (default Workload and Tunnel).
	AllowedUses []IPUse `json:"allowedUses,omitempty"`
	// DisableBGPExport keeps the pool's blocks out of BGP.
	DisableBGPExport bool `json:"disableBGPExport,omitempty"`
}

// IPReservation lists addresses that automatic allocation never hands out.
type IPReservation struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata"`
	Spec       IPReservationSpec `json:"spec"`
}

// IPReservationSpec is the desired state of an IPReservation.
type IPReservationSpec struct {
	// ReservedCIDRs are CIDRs ("10.0.0.0/28"), single addresses or ranges
	// ("10.0.0.5-10.0.0.9").
	ReservedCIDRs []string `json:"reservedCIDRs"`
}

// SecretKeySelector names a key of a Kubernetes Secret in the agent's
// namespace.
type SecretKeySelector struct {
	Name string `json:"name"`
	Key  string `json:"key"`
}

// SecretSource says where a secret value (a BGP password) comes from:
// exactly one of a Kubernetes Secret key or a file on the node.
type SecretSource struct {
	SecretKeyRef *SecretKeySelector `json:"secretKeyRef,omitempty"`
	// File is an absolute path on the node whose content (trailing newline
	// removed) is the secret.
	File string `json:"file,omitempty"`
}

// BGPConfiguration holds cluster-wide BGP settings (name "default") or a
// node's overrides (name "node.<nodename>").
type BGPConfiguration struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata"`
	Spec       BGPConfigurationSpec `json:"spec"`
}

// BGPConfigurationSpec is the desired state of a BGPConfiguration. Pointer
// fields are unset when nil, so a node override can leave them to "default".
type BGPConfigurationSpec struct {
	// ASNumber of nodes that set none themselves (default 64512).
	ASNumber *ASNumber `json:"asNumber,omitempty"`
	// NodeToNodeMeshEnabled (default true).
	NodeToNodeMeshEnabled *bool `json:"nodeToNodeMeshEnabled,omitempty"`
	// ListenPort of the BGP speaker (default 179).
	ListenPort int `json:"listenPort,omitempty"`
	// RouteReflectorClusterID given to nodes labelled as route reflectors
	// (default 244.0.0.1).
	RouteReflectorClusterID string `json:"routeReflectorClusterID,omitempty"`
	// LogSeverity: Debug, Info (default), Warning, Error.
	LogSeverity string `json:"logSeverity,omitempty"`
	// LogSeverityScreen is Calico's name for LogSeverity, accepted so that
	// Calico YAML applies unchanged; defaulting moves it into LogSeverity.
	LogSeverityScreen string `json:"logSeverityScreen,omitempty"`
	// GracefulRestartSeconds peers keep our routes while we restart
	// (default 120).
	GracefulRestartSeconds int `json:"gracefulRestartSeconds,omitempty"`
	// MeshPassword protects node-to-node mesh sessions with TCP MD5.
	MeshPassword *SecretSource `json:"meshPassword,omitempty"`
}

// NextHopMode says how a BGPPeer session treats next hops.
type NextHopMode string

// Next hop modes.
const (
	NextHopAuto NextHopMode = "Auto"
	NextHopSelf NextHopMode = "Self"
	NextHopKeep NextHopMode = "Keep"
)

// BGPPeer adds BGP sessions: to external speakers (peerIP + asNumber) or to
// selected rhizome nodes (peerSelector), from the selected nodes.
type BGPPeer struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata"`
	Spec       BGPPeerSpec `json:"spec"`
}

// BGPPeerSpec is the desired state of a BGPPeer.
type BGPPeerSpec struct {
	// Node that runs this peering; empty with an empty NodeSelector means
	// every node.
	Node string `json:"node,omitempty"`
	// NodeSelector selects the nodes that run this peering.
	NodeSelector string `json:"nodeSelector,omitempty"`
	// PeerIP of an external speaker, optionally "ip:port" ("[v6]:port").
	PeerIP string `json:"peerIP,omitempty"`
	// ASNumber of the external speaker.
	ASNumber *ASNumber `json:"asNumber,omitempty"`
	// PeerSelector selects rhizome nodes to peer with instead of PeerIP.
	PeerSelector string `json:"peerSelector,omitempty"`
	// Password for TCP MD5.
	Password *SecretSource `json:"password,omitempty"`
	// KeepaliveSeconds (default 30) and HoldSeconds (default 90; 0 or >= 3).
	KeepaliveSeconds int `json:"keepaliveSeconds,omitempty"`
	HoldSeconds      int `json:"holdSeconds,omitempty"`
	// GracefulRestartSeconds for this session (default: the
	// BGPConfiguration's).
	GracefulRestartSeconds int `json:"gracefulRestartSeconds,omitempty"`
	// Passive sessions wait for the peer to connect.
	Passive bool `json:"passive,omitempty"`
	// NextHopMode: Auto (default), Self or Keep.
	NextHopMode NextHopMode `json:"nextHopMode,omitempty"`
	// SourceAddress: UseNodeIP (default) or None.
	SourceAddress string `json:"sourceAddress,omitempty"`
}

// Source address modes of a BGPPeer.
const (
	SourceAddressUseNodeIP = "UseNodeIP"
	SourceAddressNone      = "None"
)

// Node is one rhizome node: written by its agent, editable by operators.
type Node struct {
	TypeMeta   `json:",inline"`
	ObjectMeta `json:"metadata"`
	Spec       NodeSpec    `json:"spec"`
	Status     *NodeStatus `json:"status,omitempty"`
}

// NodeSpec is the desired state of a Node.
type NodeSpec struct {
	BGP *NodeBGPSpec `json:"bgp,omitempty"`
	// IPv4VXLANTunnelAddr is the address of the node's IPv4 VXLAN device
	// (vxlan.rhizome), from a pool's Tunnel addresses (set by the agent).
	// Other nodes route VXLAN blocks via it.
	IPv4VXLANTunnelAddr string `json:"ipv4VXLANTunnelAddr,omitempty"`
	// VXLANTunnelMACAddr is the MAC address of the IPv4 VXLAN device (set
	// by the agent); other nodes put it in their neighbour and forwarding
	// entries.
	VXLANTunnelMACAddr string `json:"vxlanTunnelMACAddr,omitempty"`
	// IPv6VXLANTunnelAddr is the address of the node's IPv6 VXLAN device
	// (vxlan-v6.rhizome), set by the agent.
	IPv6VXLANTunnelAddr string `json:"ipv6VXLANTunnelAddr,omitempty"`
	// VXLANTunnelMACAddrV6 is the MAC address of the IPv6 VXLAN device
	// (set by the agent).
	VXLANTunnelMACAddrV6 string `json:"vxlanTunnelMACAddrV6,omitempty"`
}

// NodeBGPSpec is a node's BGP identity.
type NodeBGPSpec struct {
	// IPv4Address of the node in CIDR form ("10.0.0.5/24"), autodetected.
	IPv4Address string `json:"ipv4Address,omitempty"`
	// IPv6Address of the node in CIDR form, autodetected.
	IPv6Address string `json:"ipv6Address,omitempty"`
	// ASNumber overrides the BGPConfiguration's.
	ASNumber *ASNumber `json:"asNumber,omitempty"`
	// RouteReflectorClusterID makes the node a route reflector.
	RouteReflectorClusterID string `json:"routeReflectorClusterID,omitempty"`
	// IPv4TunnelAddr is the node's IPIP tunnel address (set by the agent).
	IPv4TunnelAddr string `json:"ipv4TunnelAddr,omitempty"`
}

// NodeStatus is what the node's agent reports.
type NodeStatus struct {
	AgentVersion string `json:"agentVersion,omitempty"`
	// LastHeartbeat (RFC 3339, UTC).
	LastHeartbeat string `json:"lastHeartbeat,omitempty"`
	BGPPeersUp    int    `json:"bgpPeersUp"`
	BGPPeers      int    `json:"bgpPeers"`
	// Blocks affine to the node.
	Blocks []string `json:"blocks,omitempty"`
	// IPsInUse on the node, and the addresses free in its blocks.
	IPsInUse int `json:"ipsInUse"`
	IPsFree  int `json:"ipsFree"`
	// Conditions the operator should know about (for example a pool whose
	// IPIP mode the kernel cannot serve).
	Conditions []NodeCondition `json:"conditions,omitempty"`
}

// NodeCondition is one named fact about a node's health.
type NodeCondition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}
