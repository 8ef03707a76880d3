package cni

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"

	"github.com/rhizome-net/rhizome/cni/agentapi"
)

// defaultMTU is the pod MTU when neither the config nor the agent set one.
const defaultMTU = 1500

// Plugin is rhizome-cni. Its methods are skel.CNIFuncs.
type Plugin struct{}

// Funcs returns the plugin's commands for skel.PluginMainFuncs.
func (p Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status}
}

// attachment is one invocation's parsed input.
type attachment struct {
	conf *NetConf
	pod  podArgs
	args *skel.CmdArgs
}

func parse(args *skel.CmdArgs) (*attachment, error) {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return nil, err
	}
	pod, err := parsePodArgs(args.Args)
	if err != nil {
		return nil, err
	}
	return &attachment{conf: conf, pod: pod, args: args}, nil
}

func (a *attachment) client() *agentapi.Client { return agentapi.NewClient(a.conf.Socket) }

func (a *attachment) ref() agentapi.Attachment {
	return agentapi.Attachment{ContainerID: a.args.ContainerID, IfName: a.args.IfName}
}

func (a *attachment) hostName() string {
	return HostVethName(string(a.pod.K8S_POD_NAMESPACE), string(a.pod.K8S_POD_NAME), a.args.ContainerID, a.args.IfName)
}

func (a *attachment) owner() string {
	return ownerAlias(a.conf.Name, a.args.ContainerID, a.args.IfName)
}

func (a *attachment) addRequest(v4pools, v6pools []string, v4, v6 bool) *agentapi.AddRequest {
	return &agentapi.AddRequest{
		Network:      a.conf.Name,
		Attachment:   a.ref(),
		Netns:        a.args.Netns,
		PodNamespace: string(a.pod.K8S_POD_NAMESPACE),
		PodName:      string(a.pod.K8S_POD_NAME),
		PodUID:       string(a.pod.K8S_POD_UID),
		IPv4Pools:    v4pools,
		IPv6Pools:    v6pools,
		IPv4:         v4,
		IPv6:         v6,
	}
}

// Add asks the agent for addresses and wires the pod. When a step after
// the allocation fails, it removes what it built and releases the
// addresses.
func (p Plugin) Add(args *skel.CmdArgs) (err error) {
	a, err := parse(args)
	if err != nil {
		return err
	}
	if args.Netns == "" {
		return types.NewError(types.ErrInvalidNetNS, "rhizome-cni: ADD needs a network namespace (CNI_NETNS)", "")
	}
	ctx := context.Background()
	client := a.client()
	resp, err := client.Add(ctx, a.addRequest(a.conf.IPv4Pools, a.conf.IPv6Pools, a.conf.wantIPv4(), a.conf.AssignIPv6))
	if err != nil {
		return agentError(err)
	}
	if len(resp.IPs) == 0 {
		return types.NewError(agentapi.CodeAllocation, fmt.Sprintf("rhizome-cni: rhizome-node assigned no address to pod %s", a.who()), "")
	}
	pn := &podNet{netns: args.Netns, hostName: a.hostName(), owner: a.owner(), ifName: args.IfName, mtu: a.conf.MTU}
	if pn.mtu == 0 {
		pn.mtu = resp.MTU
	}
	if pn.mtu == 0 {
		pn.mtu = defaultMTU
	}
	for _, c := range resp.IPs {
		pn.addrs = append(pn.addrs, c.Address.Addr())
	}
	defer func() {
		if err == nil {
			return
		}
		// Undo: the runtime will not call DEL for a failed ADD.
		_ = pn.teardown(true)
		if derr := client.Del(ctx, &agentapi.DelRequest{Network: a.conf.Name, Attachment: a.ref()}); derr != nil {
			err = types.NewError(agentapi.CodeNetworkSetup, err.Error(),
				fmt.Sprintf("releasing the addresses failed too (%v); the agent's GC will release them", derr))
		}
	}()
	host, cont, err := pn.setup()
	if err != nil {
		return types.NewError(agentapi.CodeNetworkSetup, fmt.Sprintf("rhizome-cni: pod %s: %v", a.who(), err), "")
	}
	result := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: host.Name, Mac: host.HardwareAddr.String()},
			{Name: cont.Name, Mac: cont.HardwareAddr.String(), Mtu: pn.mtu, Sandbox: args.Netns},
		},
	}
	contIdx := 1
	for _, addr := range pn.addrs {
		gw := gatewayV4
		if addr.Is6() {
			gw = gatewayV6
		}
		result.IPs = append(result.IPs, &types100.IPConfig{Interface: &contIdx, Address: *hostNet(addr), Gateway: gw.AsSlice()})
	}
	for _, gw := range pn.gateways() {
		dst := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if gw.Is6() {
			dst = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		result.Routes = append(result.Routes, &types.Route{Dst: dst, GW: gw.AsSlice()})
	}
	if err := ip.EnableForward(result.IPs); err != nil {
		return types.NewError(agentapi.CodeNetworkSetup, fmt.Sprintf("rhizome-cni: enable IP forwarding: %v", err), "")
	}
	return types.PrintResult(result, a.conf.CNIVersion)
}

func (a *attachment) who() string {
	if a.pod.K8S_POD_NAME != "" {
		return fmt.Sprintf("%s/%s (container %s)", a.pod.K8S_POD_NAMESPACE, a.pod.K8S_POD_NAME, a.args.ContainerID)
	}
	return "container " + a.args.ContainerID
}

// Del removes the pod's veth pair and releases its addresses. It succeeds
// when the namespace or the links are already gone; it fails (and the
// runtime retries) while the agent is unreachable, so no address leaks.
func (p Plugin) Del(args *skel.CmdArgs) error {
	a, err := parse(args)
	if err != nil {
		return err
	}
	pn := &podNet{netns: args.Netns, hostName: a.hostName(), owner: a.owner(), ifName: args.IfName}
	if err := pn.teardown(false); err != nil {
		return types.NewError(agentapi.CodeNetworkSetup, fmt.Sprintf("rhizome-cni: DEL pod %s: %v", a.who(), err), "")
	}
	if err := a.client().Del(context.Background(), &agentapi.DelRequest{Network: a.conf.Name, Attachment: a.ref()}); err != nil {
		return agentError(err)
	}
	return nil
}

// Check verifies the pod's interface, addresses and routes and that the
// agent still holds the addresses of the previous result.
func (p Plugin) Check(args *skel.CmdArgs) error {
	a, err := parse(args)
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
	pn := &podNet{netns: args.Netns, hostName: a.hostName(), owner: a.owner(), ifName: args.IfName, mtu: a.conf.MTU, addrs: addrs}
	if err := pn.check(); err != nil {
		return types.NewError(agentapi.CodeCheckFailed, fmt.Sprintf("rhizome-cni: CHECK pod %s: %v", a.who(), err), "")
	}
	return nil
}

// prevAddrs are the addresses of the previous result CHECK is given.
func prevAddrs(pc *types.PluginConf) ([]netip.Addr, error) {
	if pc.PrevResult == nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "rhizome: CHECK needs the prevResult of ADD", "")
	}
	res, err := types100.NewResultFromResult(pc.PrevResult)
	if err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("rhizome: convert prevResult: %v", err), "")
	}
	var addrs []netip.Addr
	for _, c := range res.IPs {
		if a, ok := netip.AddrFromSlice(c.Address.IP); ok {
			addrs = append(addrs, a.Unmap())
		}
	}
	return addrs, nil
}

// GC releases the addresses of attachments the runtime no longer has.
func (p Plugin) GC(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	return gc(conf.Socket, &conf.PluginConf)
}

func gc(socket string, pc *types.PluginConf) error {
	req := &agentapi.GCRequest{Network: pc.Name, Valid: []agentapi.Attachment{}}
	for _, v := range pc.ValidAttachments {
		req.Valid = append(req.Valid, agentapi.Attachment{ContainerID: v.ContainerID, IfName: v.IfName})
	}
	if _, err := agentapi.NewClient(socket).GC(context.Background(), req); err != nil {
		return agentError(err)
	}
	return nil
}

// Status reports whether pods can be added: the agent answers and can
// allocate.
func (p Plugin) Status(args *skel.CmdArgs) error {
	conf, err := ParseNetConf(args.StdinData)
	if err != nil {
		return err
	}
	return status(conf.Socket)
}

func status(socket string) error {
	st, err := agentapi.NewClient(socket).Status(context.Background())
	if err != nil {
		e := agentError(err)
		e.Code = types.ErrPluginNotAvailable
		return e
	}
	if !st.Ready {
		return types.NewError(types.ErrPluginNotAvailable, "rhizome-node cannot allocate addresses: "+st.Message, "")
	}
	return nil
}
