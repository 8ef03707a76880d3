// Package cni is rhizome's CNI plugins: rhizome-cni, which wires a pod to
// the node with a veth pair and host routes, and rhizome-ipam, an IPAM
// plugin for other main plugins. Both get addresses from the rhizome-node
// agent over the local API (cni/agentapi) and never talk to etcd or
// Kubernetes themselves (docs/design.md §7).
package cni

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/rhizome-net/rhizome/cni/agentapi"
)

// NetConf is rhizome-cni's configuration (one entry of a conflist).
type NetConf struct {
	types.PluginConf
	// MTU of the pod interface; 0 takes the agent's, else 1500.
	MTU int `json:"mtu,omitempty"`
	// Socket of the agent (default /var/run/rhizome/cni.sock).
	Socket string `json:"socket,omitempty"`
	// IPv4Pools and IPv6Pools name the pools to draw from when the pod and
	// its namespace carry no annotation.
	IPv4Pools []string `json:"ipv4Pools,omitempty"`
	IPv6Pools []string `json:"ipv6Pools,omitempty"`
	// AssignIPv4 (default true) and AssignIPv6 (default false) choose the
	// address families.
	AssignIPv4 *bool `json:"assignIPv4,omitempty"`
	AssignIPv6 bool  `json:"assignIPv6,omitempty"`
}

// networkName is what CNI allows as a network name (libcni's rule).
var networkName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`)

// ParseNetConf decodes and checks rhizome-cni's stdin configuration. It
// also parses a prevResult, if any. Errors are *types.Error with code 7
// (invalid network config) or 6 (decoding failure) naming the field.
func ParseNetConf(stdin []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("rhizome-cni: decode the network configuration: %v", err), "")
	}
	if err := checkCommon(&conf.PluginConf, conf.Socket, conf.IPv4Pools, conf.IPv6Pools); err != nil {
		return nil, err
	}
	if conf.MTU != 0 && (conf.MTU < 576 || conf.MTU > 65535) {
		return nil, invalidConf("mtu %d is out of range: use 576-65535, or leave it out to take the agent's", conf.MTU)
	}
	if !conf.wantIPv4() && !conf.AssignIPv6 {
		return nil, invalidConf("assignIPv4 is false and assignIPv6 is not set: the pod would get no address")
	}
	return conf, nil
}

func (c *NetConf) wantIPv4() bool { return c.AssignIPv4 == nil || *c.AssignIPv4 }

// checkCommon checks what both plugins' configurations share and parses
// the prevResult.
func checkCommon(pc *types.PluginConf, socket string, v4, v6 []string) error {
	if pc.Name == "" || !networkName.MatchString(pc.Name) {
		return invalidConf("network name %q must be non-empty and use only letters, digits, '_', '.', '-'", pc.Name)
	}
	if socket != "" && !filepath.IsAbs(socket) {
		return invalidConf("socket %q must be an absolute path", socket)
	}
	for _, pools := range [][]string{v4, v6} {
		for _, p := range pools {
			if p == "" || strings.ContainsAny(p, "/ \t\r\n") {
				return invalidConf("pool name %q is empty or contains '/' or spaces", p)
			}
		}
	}
	if pc.RawPrevResult != nil {
		if err := version.ParsePrevResult(pc); err != nil {
			return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("rhizome: parse prevResult: %v", err), "")
		}
	}
	return nil
}

func invalidConf(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "rhizome: invalid network configuration: "+fmt.Sprintf(format, args...), "")
}

// podArgs are the Kubernetes fields of CNI_ARGS.
type podArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS keys
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
}

// parsePodArgs reads the pod identity from CNI_ARGS; other keys are
// ignored.
func parsePodArgs(args string) (podArgs, error) {
	a := podArgs{CommonArgs: types.CommonArgs{IgnoreUnknown: true}}
	if err := types.LoadArgs(args, &a); err != nil {
		return a, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("rhizome: parse CNI_ARGS %q: %v", args, err), "")
	}
	return a, nil
}

// agentError turns an agent error into the CNI error result.
func agentError(err error) *types.Error {
	if e, ok := err.(*agentapi.Error); ok {
		return types.NewError(e.Code, e.Msg, e.Details)
	}
	return types.NewError(agentapi.CodeInternal, err.Error(), "")
}
