package bgp

import (
	"fmt"
	"net/netip"

	apipb "github.com/osrg/gobgp/v3/api"
	"google.golang.org/protobuf/types/known/anypb"
)

// apiPath translates an advertisement into a GoBGP path: origin IGP and the
// node's address as next hop (in MP_REACH_NLRI for IPv6).
func apiPath(a Advertisement) (*apipb.Path, error) {
	nlri, err := anypb.New(&apipb.IPAddressPrefix{Prefix: a.Prefix.Addr().String(), PrefixLen: uint32(a.Prefix.Bits())})
	if err != nil {
		return nil, fmt.Errorf("advertise %s: %w", a, err)
	}
	origin, err := anypb.New(&apipb.OriginAttribute{Origin: 0})
	if err != nil {
		return nil, fmt.Errorf("advertise %s: %w", a, err)
	}
	family := &apipb.Family{Afi: apipb.Family_AFI_IP, Safi: apipb.Family_SAFI_UNICAST}
	var nh *anypb.Any
	if a.Prefix.Addr().Is4() {
		nh, err = anypb.New(&apipb.NextHopAttribute{NextHop: a.NextHop.String()})
	} else {
		family = &apipb.Family{Afi: apipb.Family_AFI_IP6, Safi: apipb.Family_SAFI_UNICAST}
		nh, err = anypb.New(&apipb.MpReachNLRIAttribute{Family: family, NextHops: []string{a.NextHop.String()}, Nlris: []*anypb.Any{nlri}})
	}
	if err != nil {
		return nil, fmt.Errorf("advertise %s: %w", a, err)
	}
	return &apipb.Path{Family: family, Nlri: nlri, Pattrs: []*anypb.Any{origin, nh}}, nil
}

// routeEvent reads prefix, next hop and withdrawal out of a GoBGP path.
func routeEvent(p *apipb.Path) (RouteEvent, error) {
	var ev RouteEvent
	m, err := p.GetNlri().UnmarshalNew()
	if err != nil {
		return ev, fmt.Errorf("decode NLRI: %w", err)
	}
	pfx, ok := m.(*apipb.IPAddressPrefix)
	if !ok {
		return ev, fmt.Errorf("NLRI of type %T is not an IP prefix", m)
	}
	addr, err := netip.ParseAddr(pfx.Prefix)
	if err != nil {
		return ev, fmt.Errorf("NLRI prefix %q: %w", pfx.Prefix, err)
	}
	ev.Prefix, err = addr.Prefix(int(pfx.PrefixLen))
	if err != nil {
		return ev, fmt.Errorf("NLRI %s/%d: %w", pfx.Prefix, pfx.PrefixLen, err)
	}
	ev.Withdrawn = p.GetIsWithdraw()
	for _, a := range p.GetPattrs() {
		m, err := a.UnmarshalNew()
		if err != nil {
			continue
		}
		switch attr := m.(type) {
		case *apipb.NextHopAttribute:
			ev.NextHop, _ = netip.ParseAddr(attr.NextHop)
		case *apipb.MpReachNLRIAttribute:
			if len(attr.NextHops) > 0 {
				ev.NextHop, _ = netip.ParseAddr(attr.NextHops[0])
			}
		}
	}
	return ev, nil
}
