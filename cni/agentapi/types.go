// Package agentapi is the local API between the rhizome CNI plugins
// (rhizome-cni, rhizome-ipam) and the rhizome-node agent on the same node:
// HTTP with JSON bodies over a unix socket. The plugins ask; the agent owns
// the address allocations. Errors carry a CNI error code, so a plugin can
// hand them to the runtime unchanged.
package agentapi

import (
	"errors"
	"fmt"
	"net/netip"
)

// DefaultSocket is where the agent serves and the plugins connect.
const DefaultSocket = "/var/run/rhizome/cni.sock"

// Attachment names one network attachment of a container, as the runtime
// does: a container ID and the interface name inside the container.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// AddRequest asks for the addresses of one attachment. Repeating it for
// the same (Network, ContainerID, IfName) returns the same addresses.
type AddRequest struct {
	// Network is the CNI network name (the conflist's "name").
	Network string `json:"network"`
	Attachment
	Netns string `json:"netns,omitempty"`
	// Pod identity from CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME,
	// K8S_POD_UID); empty outside Kubernetes.
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	PodUID       string `json:"podUID,omitempty"`
	// IPv4Pools and IPv6Pools are the pools the CNI config names; pod and
	// namespace annotations take precedence.
	IPv4Pools []string `json:"ipv4Pools,omitempty"`
	IPv6Pools []string `json:"ipv6Pools,omitempty"`
	// IPv4 and IPv6 ask for an address of each family. Neither set means
	// IPv4 only.
	IPv4 bool `json:"ipv4,omitempty"`
	IPv6 bool `json:"ipv6,omitempty"`
	// Use of the addresses: "Workload" (default) or "Tunnel".
	Use string `json:"use,omitempty"`
}

// IPConfig is one address handed out.
type IPConfig struct {
	// Address is the single address (a /32 or /128 as a prefix).
	Address netip.Prefix `json:"address"`
	// Pool and PoolCIDR name the IP pool the address came from; PoolCIDR
	// lets an IPAM plugin give the address the pool's prefix length.
	Pool     string       `json:"pool"`
	PoolCIDR netip.Prefix `json:"poolCIDR"`
}

// AddResponse holds the addresses and the MTU the agent wants pods to use
// (0: the agent has no opinion, the plugin's own default applies).
type AddResponse struct {
	IPs []IPConfig `json:"ips"`
	MTU int        `json:"mtu,omitempty"`
}

// DelRequest releases the addresses of one attachment. Releasing an
// attachment that holds nothing succeeds.
type DelRequest struct {
	Network string `json:"network"`
	Attachment
}

// CheckRequest asks whether the attachment still holds the given addresses.
type CheckRequest struct {
	Network string `json:"network"`
	Attachment
	IPs []netip.Addr `json:"ips"`
}

// GCRequest releases every attachment of Network on this node that is not
// in Valid.
type GCRequest struct {
	Network string       `json:"network"`
	Valid   []Attachment `json:"valid"`
}

// GCResponse lists the handles the collection released.
type GCResponse struct {
	Released []string `json:"released"`
}

// StatusResponse says whether the agent can hand out addresses now.
type StatusResponse struct {
	Ready bool `json:"ready"`
	// Message says why not (or, when ready, what it serves).
	Message string `json:"message,omitempty"`
}

// CNI error codes (CNI spec, "Error"); 100 and up are rhizome's own.
const (
	CodeInternal           uint = 999
	CodeInvalidEnv         uint = 4
	CodeIOFailure          uint = 5
	CodeDecoding           uint = 6
	CodeInvalidConfig      uint = 7
	CodeTryAgainLater      uint = 11
	CodePluginNotAvailable uint = 50
	// CodeAllocation: the agent could not allocate (pools exhausted, no
	// usable pool, fixed address taken or outside every pool).
	CodeAllocation uint = 100
	// CodeBadAnnotation: a pod or namespace annotation does not parse.
	CodeBadAnnotation uint = 101
	// CodeNetworkSetup: building the pod's interface, addresses or routes
	// failed.
	CodeNetworkSetup uint = 102
	// CodeCheckFailed: CHECK found the attachment not as ADD left it.
	CodeCheckFailed uint = 103
)

// Error is an error with a CNI error code. The agent returns it to the
// plugin, and the plugin prints it as the CNI error result.
type Error struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
	// wrapped keeps the cause inside the agent; it does not cross the
	// socket.
	wrapped error
}

// Errorf returns an Error with code whose message is formatted; a %w verb
// keeps the cause for errors.Is inside the process.
func Errorf(code uint, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Msg: err.Error(), wrapped: errors.Unwrap(err)}
}

func (e *Error) Error() string {
	if e.Details != "" {
		return e.Msg + "; " + e.Details
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.wrapped }

// CodeOf returns the CNI code of err: its own when it is (or wraps) an
// *Error, else CodeInternal.
func CodeOf(err error) uint {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}
