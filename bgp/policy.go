package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	apipb "github.com/osrg/gobgp/v3/api"

	"github.com/rhizome-net/rhizome/api"
)

// Names of the speaker's global policies.
const (
	importPolicy = "rhizome-import"
	exportPolicy = "rhizome-export"
)

// managedPolicy is a global GoBGP policy the speaker owns, rebuilt as a
// whole when its statements change.
type managedPolicy struct {
	key  string   // fingerprint of what it was built from
	sets []string // neighbor sets it created
}

// setPolicies brings the global import and export policies in line with
// peers. It runs before sessions are added, since policies apply to routes
// as they pass.
//
// Import: from each peer with OwnRoutesOnly, accept only routes whose next
// hop is that peer. This is for route reflectors sharing a cluster ID:
// GoBGP does not drop received routes that carry its own cluster ID in
// CLUSTER_LIST (RFC 4456 section 8), so two such reflectors would keep
// each other's reflected copy of a client's route alive after the client
// withdrew it. Clients peer with every reflector of the cluster, so
// nothing is lost.
//
// Export: next hop self or unchanged towards peers with NextHopMode Self
// or Keep (Auto leaves GoBGP's rule: unchanged on iBGP, self on eBGP).
func (s *Speaker) setPolicies(ctx context.Context, peers map[netip.Addr]Peer) error {
	var own, self, keep []netip.Addr
	for a, p := range peers {
		if p.OwnRoutesOnly {
			own = append(own, a)
		}
		switch p.NextHopMode {
		case api.NextHopSelf:
			self = append(self, a)
		case api.NextHopKeep:
			keep = append(keep, a)
		}
	}
	for _, l := range [][]netip.Addr{own, self, keep} {
		slices.SortFunc(l, netip.Addr.Compare)
	}
	var imp, exp []*apipb.Statement
	var impSets, expSets []netip.Addr
	for _, a := range own {
		from := &apipb.MatchSet{Type: apipb.MatchSet_ANY, Name: setName(importPolicy, a)}
		imp = append(imp,
			&apipb.Statement{Name: from.Name + "-own", Conditions: &apipb.Conditions{NeighborSet: from, NextHopInList: []string{a.String()}},
				Actions: &apipb.Actions{RouteAction: apipb.RouteAction_ACCEPT}},
			&apipb.Statement{Name: from.Name + "-reflected", Conditions: &apipb.Conditions{NeighborSet: from},
				Actions: &apipb.Actions{RouteAction: apipb.RouteAction_REJECT}})
		impSets = append(impSets, a)
	}
	for _, a := range append(self, keep...) {
		to := &apipb.MatchSet{Type: apipb.MatchSet_ANY, Name: setName(exportPolicy, a)}
		nh := &apipb.NexthopAction{Self: slices.Contains(self, a), Unchanged: slices.Contains(keep, a)}
		exp = append(exp, &apipb.Statement{Name: to.Name + "-nexthop", Conditions: &apipb.Conditions{NeighborSet: to},
			Actions: &apipb.Actions{RouteAction: apipb.RouteAction_ACCEPT, Nexthop: nh}})
		expSets = append(expSets, a)
	}
	if err := s.replacePolicy(ctx, importPolicy, apipb.PolicyDirection_IMPORT, impSets, imp, fmt.Sprint(own)); err != nil {
		return fmt.Errorf("route reflector import policy: %w", err)
	}
	if err := s.replacePolicy(ctx, exportPolicy, apipb.PolicyDirection_EXPORT, expSets, exp, fmt.Sprint(self, keep)); err != nil {
		return fmt.Errorf("next hop export policy: %w", err)
	}
	return nil
}

func setName(policy string, a netip.Addr) string {
	return strings.TrimPrefix(policy, "rhizome-") + "-" + a.String()
}

// replacePolicy removes the policy name and its neighbor sets, and adds it
// again with stmts (one neighbor set per address in sets), unless key says
// nothing changed.
func (s *Speaker) replacePolicy(ctx context.Context, name string, dir apipb.PolicyDirection, sets []netip.Addr, stmts []*apipb.Statement, key string) error {
	old := s.policies[name]
	if old.key == key {
		return nil
	}
	if old.key != "" {
		err := s.bgp.DeletePolicyAssignment(ctx, &apipb.DeletePolicyAssignmentRequest{Assignment: &apipb.PolicyAssignment{
			Name: "global", Direction: dir, Policies: []*apipb.Policy{{Name: name}}}, All: true})
		if err != nil {
			return err
		}
		if err := s.bgp.DeletePolicy(ctx, &apipb.DeletePolicyRequest{Policy: &apipb.Policy{Name: name}, All: true}); err != nil {
			return err
		}
		for _, set := range old.sets {
			err := s.bgp.DeleteDefinedSet(ctx, &apipb.DeleteDefinedSetRequest{DefinedSet: &apipb.DefinedSet{
				DefinedType: apipb.DefinedType_NEIGHBOR, Name: set}, All: true})
			if err != nil {
				return err
			}
		}
	}
	delete(s.policies, name)
	if len(stmts) == 0 {
		return nil
	}
	m := managedPolicy{key: key}
	for _, a := range sets {
		set := setName(name, a)
		err := s.bgp.AddDefinedSet(ctx, &apipb.AddDefinedSetRequest{DefinedSet: &apipb.DefinedSet{
			DefinedType: apipb.DefinedType_NEIGHBOR, Name: set, List: []string{netip.PrefixFrom(a, a.BitLen()).String()}}})
		if err != nil {
			return fmt.Errorf("neighbor set for %s: %w", a, err)
		}
		m.sets = append(m.sets, set)
	}
	s.policies[name] = m // from here on a retry cleans up what was added
	if err := s.bgp.AddPolicy(ctx, &apipb.AddPolicyRequest{Policy: &apipb.Policy{Name: name, Statements: stmts}}); err != nil {
		return err
	}
	return s.bgp.AddPolicyAssignment(ctx, &apipb.AddPolicyAssignmentRequest{Assignment: &apipb.PolicyAssignment{
		Name: "global", Direction: dir, Policies: []*apipb.Policy{{Name: name}}, DefaultAction: apipb.RouteAction_ACCEPT}})
}
