package cnisvc

import (
	"context"
	"encoding/json"
	"sort"
	"strings"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

// nodeHandles lists the handles with the given prefix that hold addresses
// allocated to node, in any block (borrowed addresses live in other nodes'
// blocks).
func nodeHandles(ctx context.Context, store datastore.Store, node, prefix string) ([]string, error) {
	kvs, _, err := store.List(ctx, ipam.BlockPrefix)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for _, kv := range kvs {
		var b ipam.Block
		if err := json.Unmarshal(kv.Value, &b); err != nil {
			continue // the checker reports undecodable blocks
		}
		for _, idx := range b.Allocations {
			if idx == nil || *idx < 0 || *idx >= len(b.Attributes) {
				continue
			}
			a := b.Attributes[*idx]
			if a.Node == node && strings.HasPrefix(a.Handle, prefix) {
				seen[a.Handle] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for h := range seen {
		out = append(out, h)
	}
	sort.Strings(out)
	return out, nil
}
