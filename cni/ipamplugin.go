package cni

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/rhizome-net/rhizome/cni/agentapi"
)

// IPAMConf is rhizome-ipam's configuration, the "ipam" object of another
// plugin's configuration (bridge, macvlan, ipvlan, a Multus network).
type IPAMConf struct {
	Type       string   `json:"type"`
	Socket     string   `json:"socket,omitempty"`
	IPv4Pools  []string `json:"ipv4Pools,omitempty"`
	IPv6Pools  []string `json:"ipv6Pools,omitempty"`
	AssignIPv4 *bool    `json:"assignIPv4,omitempty"`
	AssignIPv6 bool     `json:"assignIPv6,omitempty"`
	// Gateway and Gateway6 are returned as the addresses' gateways and used
	// for routes without "gw".
	Gateway  string `json:"gateway,omitempty"`
	Gateway6 string `json:"gateway6,omitempty"`
	// Routes to return; each "gw" defaults to the gateway of its family.
	Routes []*types.Route `json:"routes,omitempty"`
	// ResolvConf is a resolv.conf on the host whose nameservers, search
	// domains and options are returned as the result's DNS.
	ResolvConf string `json:"resolvConf,omitempty"`

	gw4, gw6 netip.Addr
}

type ipamNetConf struct {
	types.PluginConf
	IPAM IPAMConf `json:"ipam"`
}

// ParseIPAMConf decodes and checks rhizome-ipam's stdin configuration.
func ParseIPAMConf(stdin []byte) (*types.PluginConf, *IPAMConf, error) {
	var c ipamNetConf
	if err := json.Unmarshal(stdin, &c); err != nil {
		return nil, nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("rhizome-ipam: decode the network configuration: %v", err), "")
	}
	ic := &c.IPAM
	if err := checkCommon(&c.PluginConf, ic.Socket, ic.IPv4Pools, ic.IPv6Pools); err != nil {
		return nil, nil, err
	}
	if ic.AssignIPv4 != nil && !*ic.AssignIPv4 && !ic.AssignIPv6 {
		return nil, nil, invalidConf("ipam: assignIPv4 is false and assignIPv6 is not set: no address to hand out")
	}
	for _, g := range []struct {
		s    string
		dst  *netip.Addr
		v4   bool
		name string
	}{{ic.Gateway, &ic.gw4, true, "gateway"}, {ic.Gateway6, &ic.gw6, false, "gateway6"}} {
		if g.s == "" {
			continue
		}
		a, err := netip.ParseAddr(g.s)
		if err != nil || a.Is4() != g.v4 || a.Zone() != "" {
			return nil, nil, invalidConf("ipam: %s %q is not an IPv%s address", g.name, g.s, map[bool]string{true: "4", false: "6"}[g.v4])
		}
		*g.dst = a
	}
	for i, r := range ic.Routes {
		if r == nil || r.Dst.IP == nil {
			return nil, nil, invalidConf("ipam: route %d has no \"dst\"", i)
		}
	}
	return &c.PluginConf, ic, nil
}

// IPAMPlugin is rhizome-ipam. Its methods are skel.CNIFuncs.
type IPAMPlugin struct{}

// Funcs returns the plugin's commands for skel.PluginMainFuncs.
func (p IPAMPlugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

func parseIPAM(args *skel.CmdArgs) (*attachment, *IPAMConf, error) {
	pc, ic, err := ParseIPAMConf(args.StdinData)
	if err != nil {
		return nil, nil, err
	}
	pod, err := parsePodArgs(args.Args)
	if err != nil {
		return nil, nil, err
	}
	conf := &NetConf{PluginConf: *pc, Socket: ic.Socket}
	return &attachment{conf: conf, pod: pod, args: args}, ic, nil
}

// Add returns addresses (with their pool's prefix length), gateways,
// routes and DNS for the calling main plugin.
func (p IPAMPlugin) Add(args *skel.CmdArgs) error {
	a, ic, err := parseIPAM(args)
	if err != nil {
		return err
	}
	dns, err := readResolvConf(ic.ResolvConf)
	if err != nil {
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("rhizome-ipam: resolvConf: %v", err), "")
	}
	ctx := context.Background()
	client := a.client()
	resp, err := client.Add(ctx, a.addRequest(ic.IPv4Pools, ic.IPv6Pools, ic.AssignIPv4 == nil || *ic.AssignIPv4, ic.AssignIPv6))
	if err != nil {
		return agentError(err)
	}
	result := &types100.Result{CNIVersion: types100.ImplementedSpecVersion, DNS: dns}
	for _, c := range resp.IPs {
		addr := c.Address.Addr()
		bits := c.PoolCIDR.Bits()
		if !c.PoolCIDR.IsValid() {
			bits = addr.BitLen()
		}
		cfg := &types100.IPConfig{Address: net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(bits, addr.BitLen())}}
		if gw := ic.gateway(addr.Is4()); gw.IsValid() {
			cfg.Gateway = gw.AsSlice()
		}
		result.IPs = append(result.IPs, cfg)
	}
	for _, r := range ic.Routes {
		route := *r
		if route.GW == nil {
			if gw := ic.gateway(r.Dst.IP.To4() != nil); gw.IsValid() {
				route.GW = gw.AsSlice()
			}
		}
		result.Routes = append(result.Routes, &route)
	}
	return types.PrintResult(result, a.conf.CNIVersion)
}

func (ic *IPAMConf) gateway(v4 bool) netip.Addr {
	if v4 {
		return ic.gw4
	}
	return ic.gw6
}

// Del releases the attachment's addresses.
func (p IPAMPlugin) Del(args *skel.CmdArgs) error {
	a, _, err := parseIPAM(args)
	if err != nil {
		return err
	}
	if err := a.client().Del(context.Background(), &agentapi.DelRequest{Network: a.conf.Name, Attachment: a.ref()}); err != nil {
		return agentError(err)
	}
	return nil
}

// Check verifies that the agent still holds the previous result's
// addresses.
func (p IPAMPlugin) Check(args *skel.CmdArgs) error {
	a, _, err := parseIPAM(args)
	if err != nil {
		return err
	}
	addrs, err := prevAddrs(&a.conf.PluginConf)
	if err != nil {
		return err
	}
	if err := a.client().Check(context.Background(), &agentapi.CheckRequest{Network: a.conf.Name, Attachment: a.ref(), IPs: addrs}); err != nil {
		return agentError(err)
	}
	return nil
}

// GC releases the addresses of attachments the runtime no longer has.
func (p IPAMPlugin) GC(args *skel.CmdArgs) error {
	pc, ic, err := ParseIPAMConf(args.StdinData)
	if err != nil {
		return err
	}
	return gc(ic.Socket, pc)
}

// Status reports whether the agent can allocate.
func (p IPAMPlugin) Status(args *skel.CmdArgs) error {
	_, ic, err := ParseIPAMConf(args.StdinData)
	if err != nil {
		return err
	}
	return status(ic.Socket)
}

// readResolvConf reads the DNS settings of a resolv.conf; an empty path
// returns none.
func readResolvConf(path string) (types.DNS, error) {
	var dns types.DNS
	if path == "" {
		return dns, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return dns, err
	}
	return parseResolvConf(data), nil
}

func parseResolvConf(data []byte) types.DNS {
	var dns types.DNS
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "nameserver":
			dns.Nameservers = append(dns.Nameservers, f[1])
		case "domain":
			dns.Domain = f[1]
		case "search":
			dns.Search = append(dns.Search[:0], f[1:]...)
		case "options":
			dns.Options = append(dns.Options, f[1:]...)
		}
	}
	return dns
}
