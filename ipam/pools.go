package ipam

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
)

// Errors callers can test with errors.Is. Each comes wrapped in a message
// that names the node, the pools and the reason.
var (
	ErrNoUsablePool  = errors.New("no usable IP pool")
	ErrExhausted     = errors.New("IP pools exhausted")
	ErrAddressInUse  = errors.New("address in use")
	ErrReserved      = errors.New("address reserved")
	ErrNotInPool     = errors.New("address outside every IP pool")
	ErrPoolDisabled  = errors.New("IP pool disabled")
	ErrUnknownPool   = errors.New("unknown IP pool")
	ErrBadRequest    = errors.New("bad request")
	ErrAllocatorDown = errors.New("allocator stopped")
)

// pool is an IPPool with its parsed CIDR and selectors.
type pool struct {
	*api.IPPool
	cidr    netip.Prefix
	nodeSel labels.Selector
	nsSel   labels.Selector
}

func (p *pool) allows(use api.IPUse) bool { return slices.Contains(p.Spec.AllowedUses, use) }

// addrRange is an inclusive range of reserved addresses.
type addrRange struct{ first, last netip.Addr }

func (r addrRange) contains(a netip.Addr) bool {
	return r.first.Compare(a) <= 0 && a.Compare(r.last) <= 0
}

// snapshot is what allocation decisions are made from: the pools, the
// reservations, the IPAM configuration and this node's labels.
type snapshot struct {
	pools      []*pool // sorted by name
	reserved   []addrRange
	config     Config
	nodeLabels labels.Set
}

// newSnapshot parses the stored resources. Pools or reservations that do
// not parse are skipped (validation keeps them out of the store).
func newSnapshot(pools []*api.IPPool, reservations []*api.IPReservation, cfg Config, nodeLabels map[string]string) *snapshot {
	s := &snapshot{config: cfg, nodeLabels: labels.Set(nodeLabels)}
	for _, p := range pools {
		cidr, err := netip.ParsePrefix(p.Spec.CIDR)
		if err != nil || p.Spec.BlockSize < cidr.Bits() {
			continue
		}
		ns, err1 := api.ParseSelector(p.Spec.NodeSelector)
		nss, err2 := api.ParseSelector(p.Spec.NamespaceSelector)
		if err1 != nil || err2 != nil {
			continue
		}
		s.pools = append(s.pools, &pool{IPPool: p, cidr: cidr, nodeSel: ns, nsSel: nss})
	}
	slices.SortFunc(s.pools, func(a, b *pool) int { return strings.Compare(a.Name, b.Name) })
	for _, r := range reservations {
		for _, entry := range r.Spec.ReservedCIDRs {
			if first, last, err := api.ParseAddressRange(entry); err == nil {
				s.reserved = append(s.reserved, addrRange{first, last})
			}
		}
	}
	return s
}

// withLabels returns a copy of s that places by these node labels.
func (s *snapshot) withLabels(l map[string]string) *snapshot {
	c := *s
	c.nodeLabels = labels.Set(l)
	return &c
}

// loadSnapshot reads everything a snapshot needs from the store.
func loadSnapshot(ctx context.Context, res *datastore.Resources, node string) (*snapshot, error) {
	pools, _, err := res.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	objs, _, err := res.List(ctx, api.KindIPReservation)
	if err != nil {
		return nil, err
	}
	reservations := make([]*api.IPReservation, len(objs))
	for i, o := range objs {
		reservations[i] = o.(*api.IPReservation)
	}
	cfg, err := ReadConfig(ctx, res.Store())
	if err != nil {
		return nil, err
	}
	var nodeLabels map[string]string
	if node != "" {
		obj, err := res.Get(ctx, api.KindNode, node)
		switch {
		case err == nil:
			nodeLabels = obj.GetObjectMeta().Labels
		case !errors.Is(err, datastore.ErrNotFound):
			return nil, err
		}
	}
	return newSnapshot(pools, reservations, cfg, nodeLabels), nil
}

// ReadConfig reads the IPAM configuration, or the defaults when none is stored.
func ReadConfig(ctx context.Context, store datastore.Store) (Config, error) {
	kv, err := store.Get(ctx, configKey)
	if errors.Is(err, datastore.ErrNotFound) {
		return DefaultConfig(), nil
	}
	if err != nil {
		return Config{}, err
	}
	return DecodeConfig(kv.Value)
}

// poolOf returns the pool containing addr.
func (s *snapshot) poolOf(addr netip.Addr) *pool {
	for _, p := range s.pools {
		if p.cidr.Contains(addr) {
			return p
		}
	}
	return nil
}

// poolByName finds a pool.
func (s *snapshot) poolByName(name string) *pool {
	for _, p := range s.pools {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// isReserved reports whether automatic allocation must skip addr: it lies
// in an IPReservation, or it is the network or broadcast address of its
// pool (for IPv4 pools larger than /31; for IPv6 the subnet-router anycast
// address of pools larger than /127).
func (s *snapshot) isReserved(p *pool, addr netip.Addr) bool {
	if p != nil {
		bits := p.cidr.Bits()
		if addr == p.cidr.Addr() && ((addr.Is4() && bits < 31) || (addr.Is6() && bits < 127)) {
			return true
		}
		if addr.Is4() && bits < 31 && addr == lastAddr(p.cidr) {
			return true
		}
	}
	for _, r := range s.reserved {
		if r.contains(addr) {
			return true
		}
	}
	return false
}

// reservedWhy says why an address is reserved, for error messages.
func (s *snapshot) reservedWhy(p *pool, addr netip.Addr) string {
	for _, r := range s.reserved {
		if r.contains(addr) {
			return fmt.Sprintf("reserved by an IPReservation (%s-%s)", r.first, r.last)
		}
	}
	return fmt.Sprintf("the network or broadcast address of pool %s (%s)", p.Name, p.cidr)
}

// rejection is why one pool was not used.
type rejection struct {
	pool, cidr, why string
}

func formatRejections(rs []rejection) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		if r.cidr != "" {
			parts[i] = fmt.Sprintf("%s (%s): %s", r.pool, r.cidr, r.why)
		} else {
			parts[i] = fmt.Sprintf("%s: %s", r.pool, r.why)
		}
	}
	return strings.Join(parts, "; ")
}

// selectPools chooses the pools a request may draw from, in order: the
// pools it names, else every enabled Automatic pool whose nodeSelector
// matches the node and whose namespaceSelector matches the namespace. It
// returns the rejected pools with the reason for each.
func (s *snapshot) selectPools(req *Request) ([]*pool, []rejection) {
	var chosen []*pool
	var rejected []rejection
	reject := func(p *pool, why string) {
		rejected = append(rejected, rejection{p.Name, p.cidr.String(), why})
	}
	family := func(p *pool) bool { return p.cidr.Addr().Is4() == (req.Family != 6) }

	if len(req.Pools) > 0 {
		for _, name := range req.Pools {
			p := s.poolByName(name)
			switch {
			case p == nil:
				rejected = append(rejected, rejection{pool: name, why: "no such pool"})
			case !family(p):
				reject(p, fmt.Sprintf("not an IPv%d pool", req.familyNum()))
			case p.Spec.Disabled:
				reject(p, "disabled")
			case !p.allows(req.Use):
				reject(p, fmt.Sprintf("allowedUses %v excludes %s", p.Spec.AllowedUses, req.Use))
			case !p.nodeSel.Matches(s.nodeLabels):
				reject(p, fmt.Sprintf("nodeSelector '%s' does not select this node (labels %s)", p.Spec.NodeSelector, orNone(s.nodeLabels.String())))
			default:
				chosen = append(chosen, p)
			}
		}
		return chosen, rejected
	}
	for _, p := range s.pools {
		switch {
		case !family(p):
			continue // not worth mentioning
		case p.Spec.Disabled:
			reject(p, "disabled")
		case p.Spec.AssignmentMode == api.AssignmentManual:
			reject(p, "assignmentMode Manual (serves only requests that name it)")
		case !p.allows(req.Use):
			reject(p, fmt.Sprintf("allowedUses %v excludes %s", p.Spec.AllowedUses, req.Use))
		case !p.nodeSel.Matches(s.nodeLabels):
			reject(p, fmt.Sprintf("nodeSelector '%s' does not select this node (labels %s)", p.Spec.NodeSelector, orNone(s.nodeLabels.String())))
		case !p.nsSel.Matches(labels.Set(req.NamespaceLabels)):
			reject(p, fmt.Sprintf("namespaceSelector '%s' does not select namespace %q", p.Spec.NamespaceSelector, req.Namespace))
		default:
			chosen = append(chosen, p)
		}
	}
	return chosen, rejected
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
