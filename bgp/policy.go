package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	apipb "github.com/osrg/gobgp/v3/api"
)

// importPolicy is the name of the speaker's global import policy.
const importPolicy = "rhizome-import"

// setImportPolicy makes the global import policy accept, from each peer in
// ownOnly, only the routes whose next hop is that peer (the routes it
// originates), and everything from other peers.
//
// It exists for route reflectors sharing a cluster ID: GoBGP does not drop
// received routes that carry its own cluster ID in CLUSTER_LIST (RFC 4456
// section 8), so two such reflectors keep each other's reflected copy of
// a client's route alive after the client withdrew it. Clients peer with
// every reflector of the cluster, so nothing is lost.
func (s *Speaker) setImportPolicy(ctx context.Context, ownOnly []netip.Addr) error {
	slices.SortFunc(ownOnly, netip.Addr.Compare)
	if slices.Equal(ownOnly, s.ownOnly) {
		return nil
	}
	if len(s.ownOnly) > 0 {
		err := s.bgp.DeletePolicyAssignment(ctx, &apipb.DeletePolicyAssignmentRequest{Assignment: &apipb.PolicyAssignment{
			Name: "global", Direction: apipb.PolicyDirection_IMPORT, Policies: []*apipb.Policy{{Name: importPolicy}}}, All: true})
		if err != nil {
			return fmt.Errorf("replace the route reflector import policy: %w", err)
		}
		if err := s.bgp.DeletePolicy(ctx, &apipb.DeletePolicyRequest{Policy: &apipb.Policy{Name: importPolicy}, All: true}); err != nil {
			return fmt.Errorf("replace the route reflector import policy: %w", err)
		}
		for _, a := range s.ownOnly {
			err := s.bgp.DeleteDefinedSet(ctx, &apipb.DeleteDefinedSetRequest{DefinedSet: &apipb.DefinedSet{
				DefinedType: apipb.DefinedType_NEIGHBOR, Name: neighborSet(a)}, All: true})
			if err != nil {
				return fmt.Errorf("replace the route reflector import policy: %w", err)
			}
		}
		s.ownOnly = nil
	}
	if len(ownOnly) == 0 {
		return nil
	}
	var stmts []*apipb.Statement
	for _, a := range ownOnly {
		err := s.bgp.AddDefinedSet(ctx, &apipb.AddDefinedSetRequest{DefinedSet: &apipb.DefinedSet{
			DefinedType: apipb.DefinedType_NEIGHBOR, Name: neighborSet(a), List: []string{netip.PrefixFrom(a, a.BitLen()).String()}}})
		if err != nil {
			return fmt.Errorf("route reflector import policy for %s: %w", a, err)
		}
		from := &apipb.MatchSet{Type: apipb.MatchSet_ANY, Name: neighborSet(a)}
		stmts = append(stmts,
			&apipb.Statement{Name: neighborSet(a) + "-own", Conditions: &apipb.Conditions{NeighborSet: from, NextHopInList: []string{a.String()}},
				Actions: &apipb.Actions{RouteAction: apipb.RouteAction_ACCEPT}},
			&apipb.Statement{Name: neighborSet(a) + "-reflected", Conditions: &apipb.Conditions{NeighborSet: from},
				Actions: &apipb.Actions{RouteAction: apipb.RouteAction_REJECT}})
	}
	if err := s.bgp.AddPolicy(ctx, &apipb.AddPolicyRequest{Policy: &apipb.Policy{Name: importPolicy, Statements: stmts}}); err != nil {
		return fmt.Errorf("route reflector import policy: %w", err)
	}
	err := s.bgp.AddPolicyAssignment(ctx, &apipb.AddPolicyAssignmentRequest{Assignment: &apipb.PolicyAssignment{
		Name: "global", Direction: apipb.PolicyDirection_IMPORT, Policies: []*apipb.Policy{{Name: importPolicy}}, DefaultAction: apipb.RouteAction_ACCEPT}})
	if err != nil {
		return fmt.Errorf("route reflector import policy: %w", err)
	}
	s.ownOnly = ownOnly
	return nil
}

func neighborSet(a netip.Addr) string { return "rr-" + a.String() }
