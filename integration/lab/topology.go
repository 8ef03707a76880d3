// Package lab builds a rhizome cluster on one Linux machine out of network
// namespaces: racks are bridges, a router namespace joins them, every node
// is a namespace running the real rhizome-node, etcd runs in a namespace of
// its own, and pods are namespaces wired by the real rhizome-cni through
// libcni, each running a small TCP responder. It is what `make lab` runs
// and what the end-to-end tests build on.
package lab

import (
	_ "embed"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"sigs.k8s.io/yaml"
)

// Topology describes a lab.
type Topology struct {
	Racks  []Rack `json:"racks"`
	Router Router `json:"router"`
	Nodes  []Node `json:"nodes"`
	// DefaultPoolCIDR is the pool the agents create when the cluster has
	// none; the lab deletes it before applying Resources, as seed 000 does.
	DefaultPoolCIDR string `json:"defaultPoolCIDR,omitempty"`
	// Resources is a YAML stream applied with rhizomectl.
	Resources string     `json:"resources,omitempty"`
	Workloads []Workload `json:"workloads"`
}

// Rack is one subnet on its own bridge. The router has the subnet's last
// address (.254 in a /24); nodes count up from .1.
type Rack struct {
	Name   string `json:"name"`
	Subnet string `json:"subnet"`
}

// Router joins the racks. It runs rhizome-node as a route reflector when
// RouteReflectorClusterID is set, and hosts no pods.
type Router struct {
	Name                    string `json:"name"`
	RouteReflectorClusterID string `json:"routeReflectorClusterID,omitempty"`
}

// Node is one rhizome node in a rack.
type Node struct {
	Name   string            `json:"name"`
	Rack   string            `json:"rack"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Workload is a set of pods spread over the nodes in turn, each answering
// TCP on Port with its own name.
type Workload struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	Replicas  int    `json:"replicas"`
	Port      int    `json:"port"`
}

//go:embed seed000.yaml
var seed000 []byte

// Seed000 is the default topology: seed 000's four nodes in two racks.
func Seed000() *Topology {
	t, err := ParseTopology(seed000)
	if err != nil {
		panic(err) // the embedded file is tested
	}
	return t
}

// LoadTopology reads a topology file.
func LoadTopology(path string) (*Topology, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	t, err := ParseTopology(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// ParseTopology decodes and checks a topology.
func ParseTopology(b []byte) (*Topology, error) {
	var t Topology
	if err := yaml.UnmarshalStrict(b, &t); err != nil {
		return nil, fmt.Errorf("topology: %w", err)
	}
	return &t, t.validate()
}

func (t *Topology) validate() error {
	racks := map[string]bool{}
	for _, r := range t.Racks {
		p, err := netip.ParsePrefix(r.Subnet)
		if err != nil || !p.Addr().Is4() || p.Bits() > 29 || p.Masked() != p {
			return fmt.Errorf("topology: rack %q: subnet %q: want a canonical IPv4 subnet of at least /29", r.Name, r.Subnet)
		}
		racks[r.Name] = true
	}
	if len(t.Racks) == 0 {
		return fmt.Errorf("topology: no racks")
	}
	if t.Router.Name == "" {
		return fmt.Errorf("topology: router.name is empty")
	}
	names := map[string]bool{t.Router.Name: true}
	for _, n := range t.Nodes {
		if !racks[n.Rack] {
			return fmt.Errorf("topology: node %q: rack %q is not among the racks", n.Name, n.Rack)
		}
		if names[n.Name] || n.Name == "" || strings.ContainsAny(n.Name, "/ ") {
			return fmt.Errorf("topology: node name %q is empty, repeated or not a plain name", n.Name)
		}
		names[n.Name] = true
	}
	if len(t.Nodes) == 0 {
		return fmt.Errorf("topology: no nodes")
	}
	for _, w := range t.Workloads {
		if w.Name == "" || w.Replicas < 0 || w.Port <= 0 || w.Port > 65535 {
			return fmt.Errorf("topology: workload %q: want a name, replicas >= 0 and a port 1-65535", w.Name)
		}
	}
	return nil
}

// rackAddr is host number i of the rack's subnet; i = -2 is the router's
// (the last usable address).
func rackAddr(subnet string, i int) netip.Prefix {
	p := netip.MustParsePrefix(subnet)
	a := p.Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	if i < 0 {
		n += uint32(1)<<(32-p.Bits()) + uint32(i)
	} else {
		n += uint32(i)
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), p.Bits())
}
