// Package cnisvc answers the CNI plugins' requests for the node agent: it
// implements agentapi.Backend over the node's ipam.Allocator, choosing
// pools and fixed addresses from pod and namespace annotations.
package cnisvc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/cni/agentapi"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

// PodInfo gives the annotations and labels of pods and namespaces. The
// agent implements it with informers (a direct GET on a cache miss).
// A pod or namespace that does not exist is an error wrapping ErrNotFound.
type PodInfo interface {
	Pod(ctx context.Context, namespace, name string) (annotations, labels map[string]string, err error)
	Namespace(ctx context.Context, name string) (annotations, labels map[string]string, err error)
}

// ErrNotFound is what a PodInfo wraps when the pod or namespace is unknown.
var ErrNotFound = errors.New("not found")

// Config is what a Service needs.
type Config struct {
	// Allocator hands out this node's addresses (required).
	Allocator *ipam.Allocator
	// Store is the datastore the allocator uses (required): handles are
	// read from it directly.
	Store datastore.Store
	// Pods gives annotations and labels; nil runs without Kubernetes.
	Pods PodInfo
	// MTU is the pod interface MTU the agent tells plugins (0: none).
	MTU int
	// Ready, if set, is an extra condition for STATUS (e.g. the Node is
	// registered); its error says what is missing.
	Ready func(ctx context.Context) error
	Log   *slog.Logger
}

// Service implements agentapi.Backend.
type Service struct {
	cfg   Config
	alloc *ipam.Allocator
	store datastore.Store
	res   *datastore.Resources
	log   *slog.Logger
	locks keyedLocks

	poolsMu sync.Mutex
	pools   map[string]netip.Prefix // pool name -> CIDR (immutable)
}

var _ agentapi.Backend = (*Service)(nil)

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Allocator == nil || cfg.Store == nil {
		return nil, errors.New("cnisvc: Allocator and Store are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Service{
		cfg:   cfg,
		alloc: cfg.Allocator,
		store: cfg.Store,
		res:   datastore.NewResources(cfg.Store),
		log:   cfg.Log.With("node", cfg.Allocator.Node()),
		locks: keyedLocks{held: map[string]*keyedLock{}},
		pools: map[string]netip.Prefix{},
	}, nil
}

// HandleID is the IPAM handle of one attachment:
// "<network>.<containerID>.<ifname>".
func HandleID(network, containerID, ifName string) string {
	return network + "." + containerID + "." + ifName
}

// releaseTimeout bounds the clean-up release after a failed ADD, which
// runs even when the request's context is gone.
const releaseTimeout = 10 * time.Second

// Add hands out the attachment's addresses, or returns those it already
// holds.
func (s *Service) Add(ctx context.Context, req *agentapi.AddRequest) (*agentapi.AddResponse, error) {
	if err := checkAttachment(req.Network, req.Attachment); err != nil {
		return nil, err
	}
	handle := HandleID(req.Network, req.ContainerID, req.IfName)
	defer s.locks.lock(handle)()

	held, err := ipam.ByHandle(ctx, s.store, handle)
	if err != nil {
		return nil, agentapi.Errorf(agentapi.CodeTryAgainLater, "read IPAM handle %s from etcd: %w", handle, err)
	}
	if len(held) > 0 {
		return s.response(ctx, held, nil)
	}
	who := describe(req)
	addressing, nsLabels, err := s.podAddressing(ctx, req)
	if err != nil {
		return nil, err
	}
	var assigned []ipam.Assignment
	fail := func(err error) (*agentapi.AddResponse, error) {
		s.releaseAfterFailure(handle)
		return nil, allocationError(who, err)
	}
	if len(addressing.Addrs) > 0 {
		for _, addr := range addressing.Addrs {
			a, err := s.alloc.AssignIP(ctx, addr, ipam.Attribute{
				Handle: handle, Namespace: req.PodNamespace, Pod: req.PodName, Use: api.IPUse(req.Use)})
			if err != nil {
				return fail(fmt.Errorf("fixed address %s (annotation %s): %w", addr, AnnotationIPAddrs, err))
			}
			assigned = append(assigned, a)
		}
	} else {
		wantV4 := req.IPv4 || !req.IPv6 || len(addressing.IPv4Pools) > 0
		wantV6 := req.IPv6 || len(addressing.IPv6Pools) > 0
		for _, fam := range []struct {
			want  bool
			num   int
			pools []string
		}{{wantV4, 4, firstNonEmpty(addressing.IPv4Pools, req.IPv4Pools)}, {wantV6, 6, firstNonEmpty(addressing.IPv6Pools, req.IPv6Pools)}} {
			if !fam.want {
				continue
			}
			as, err := s.alloc.AutoAssign(ctx, ipam.Request{
				Handle:          handle,
				Namespace:       req.PodNamespace,
				NamespaceLabels: nsLabels,
				Pod:             req.PodName,
				Pools:           fam.pools,
				Use:             api.IPUse(req.Use),
				Family:          fam.num,
			})
			if err != nil {
				return fail(err)
			}
			assigned = append(assigned, as...)
		}
	}
	addrs := make([]netip.Addr, len(assigned))
	for i, a := range assigned {
		addrs[i] = a.Addr
	}
	s.log.Debug("assigned", "handle", handle, "addrs", addrs)
	return s.response(ctx, addrs, assigned)
}

// podAddressing reads the annotations of the pod and its namespace, and
// the namespace's labels (for pools' namespaceSelector).
func (s *Service) podAddressing(ctx context.Context, req *agentapi.AddRequest) (Addressing, map[string]string, error) {
	if s.cfg.Pods == nil || req.PodName == "" || req.PodNamespace == "" {
		return Addressing{}, nil, nil
	}
	podAnn, _, err := s.cfg.Pods.Pod(ctx, req.PodNamespace, req.PodName)
	if err != nil {
		return Addressing{}, nil, agentapi.Errorf(agentapi.CodeTryAgainLater, "read pod %s/%s from Kubernetes: %w", req.PodNamespace, req.PodName, err)
	}
	nsAnn, nsLabels, err := s.cfg.Pods.Namespace(ctx, req.PodNamespace)
	if err != nil {
		return Addressing{}, nil, agentapi.Errorf(agentapi.CodeTryAgainLater, "read namespace %s from Kubernetes: %w", req.PodNamespace, err)
	}
	a, err := ParseAnnotations(podAnn, nsAnn)
	if err != nil {
		return Addressing{}, nil, agentapi.Errorf(agentapi.CodeBadAnnotation, "pod %s/%s: %w", req.PodNamespace, req.PodName, err)
	}
	return a, nsLabels, nil
}

func (s *Service) releaseAfterFailure(handle string) {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if _, err := s.alloc.ReleaseHandle(ctx, handle); err != nil {
		s.log.Warn("release after failed ADD; the controller's leak check will collect it", "handle", handle, "err", err)
	}
}

// response builds the answer for addrs; as (when known) names their pools.
func (s *Service) response(ctx context.Context, addrs []netip.Addr, as []ipam.Assignment) (*agentapi.AddResponse, error) {
	resp := &agentapi.AddResponse{MTU: s.cfg.MTU}
	for i, a := range addrs {
		var poolName string
		if i < len(as) {
			poolName = as[i].Pool
		}
		name, cidr, err := s.poolOf(ctx, a, poolName)
		if err != nil {
			return nil, agentapi.Errorf(agentapi.CodeTryAgainLater, "read the IP pool of %s: %w", a, err)
		}
		resp.IPs = append(resp.IPs, agentapi.IPConfig{
			Address:  netip.PrefixFrom(a, a.BitLen()),
			Pool:     name,
			PoolCIDR: cidr,
		})
	}
	return resp, nil
}

// poolOf finds the pool holding addr (by name when known), from a cache
// of pool CIDRs that is reloaded on a miss.
func (s *Service) poolOf(ctx context.Context, addr netip.Addr, name string) (string, netip.Prefix, error) {
	s.poolsMu.Lock()
	defer s.poolsMu.Unlock()
	find := func() (string, netip.Prefix, bool) {
		if c, ok := s.pools[name]; ok && c.Contains(addr) {
			return name, c, true
		}
		for n, c := range s.pools {
			if c.Contains(addr) {
				return n, c, true
			}
		}
		return "", netip.Prefix{}, false
	}
	if n, c, ok := find(); ok {
		return n, c, nil
	}
	pools, _, err := s.res.ListPools(ctx)
	if err != nil {
		return "", netip.Prefix{}, err
	}
	clear(s.pools)
	for _, p := range pools {
		if c, err := netip.ParsePrefix(p.Spec.CIDR); err == nil {
			s.pools[p.Name] = c
		}
	}
	if n, c, ok := find(); ok {
		return n, c, nil
	}
	// The pool was deleted while the address stayed allocated: answer
	// with the address alone.
	return "", netip.PrefixFrom(addr, addr.BitLen()), nil
}

// Del releases the attachment's addresses; an attachment without any
// succeeds.
func (s *Service) Del(ctx context.Context, req *agentapi.DelRequest) error {
	if err := checkAttachment(req.Network, req.Attachment); err != nil {
		return err
	}
	handle := HandleID(req.Network, req.ContainerID, req.IfName)
	defer s.locks.lock(handle)()
	released, err := s.alloc.ReleaseHandle(ctx, handle)
	if err != nil {
		return agentapi.Errorf(agentapi.CodeTryAgainLater, "release IPAM handle %s: %w", handle, err)
	}
	s.log.Debug("released", "handle", handle, "addrs", released)
	return nil
}

// Check verifies that the attachment holds exactly the given addresses.
func (s *Service) Check(ctx context.Context, req *agentapi.CheckRequest) error {
	if err := checkAttachment(req.Network, req.Attachment); err != nil {
		return err
	}
	handle := HandleID(req.Network, req.ContainerID, req.IfName)
	held, err := ipam.ByHandle(ctx, s.store, handle)
	if err != nil {
		return agentapi.Errorf(agentapi.CodeTryAgainLater, "read IPAM handle %s from etcd: %w", handle, err)
	}
	want := slices.Clone(req.IPs)
	slices.SortFunc(want, netip.Addr.Compare)
	if !slices.Equal(held, want) {
		return agentapi.Errorf(agentapi.CodeCheckFailed, "container %s interface %s: IPAM handle %s holds %v, but the attachment has %v: delete and re-create the pod", req.ContainerID, req.IfName, handle, held, want)
	}
	return nil
}

// GC releases every handle of req.Network on this node whose attachment
// is not in req.Valid. Attachments with an ADD or DEL in flight are left
// alone.
func (s *Service) GC(ctx context.Context, req *agentapi.GCRequest) (*agentapi.GCResponse, error) {
	if req.Network == "" {
		return nil, agentapi.Errorf(agentapi.CodeInvalidConfig, "GC needs the network name")
	}
	valid := make(map[string]bool, len(req.Valid))
	for _, a := range req.Valid {
		valid[HandleID(req.Network, a.ContainerID, a.IfName)] = true
	}
	handles, err := ipam.NodeHandles(ctx, s.store, s.alloc.Node(), req.Network)
	if err != nil {
		return nil, agentapi.Errorf(agentapi.CodeTryAgainLater, "list the addresses of node %s: %w", s.alloc.Node(), err)
	}
	resp := &agentapi.GCResponse{Released: []string{}}
	var errs []error
	for _, h := range handles {
		if valid[h] || s.locks.busy(h) {
			continue
		}
		if _, err := s.alloc.ReleaseHandle(ctx, h); err != nil {
			errs = append(errs, fmt.Errorf("release %s: %w", h, err))
			continue
		}
		s.log.Info("GC released handle the runtime no longer knows", "handle", h)
		resp.Released = append(resp.Released, h)
	}
	if len(errs) > 0 {
		return resp, agentapi.Errorf(agentapi.CodeTryAgainLater, "GC of network %s: %w", req.Network, errors.Join(errs...))
	}
	return resp, nil
}

// Status says whether this agent can allocate: etcd answers, at least one
// pool is enabled, and the agent's own condition holds.
func (s *Service) Status(ctx context.Context) (*agentapi.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	pools, _, err := s.res.ListPools(ctx)
	if err != nil {
		return &agentapi.StatusResponse{Message: fmt.Sprintf("rhizome-node on %s cannot read IP pools from etcd: %v", s.alloc.Node(), err)}, nil
	}
	enabled := 0
	for _, p := range pools {
		if !p.Spec.Disabled {
			enabled++
		}
	}
	if enabled == 0 {
		return &agentapi.StatusResponse{Message: "there are no enabled IP pools: create one (rhizomectl apply -f pool.yaml)"}, nil
	}
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(ctx); err != nil {
			return &agentapi.StatusResponse{Message: fmt.Sprintf("rhizome-node on %s is not ready: %v", s.alloc.Node(), err)}, nil
		}
	}
	return &agentapi.StatusResponse{Ready: true, Message: fmt.Sprintf("node %s, %d enabled IP pools", s.alloc.Node(), enabled)}, nil
}

func checkAttachment(network string, a agentapi.Attachment) error {
	switch {
	case network == "":
		return agentapi.Errorf(agentapi.CodeInvalidConfig, "the CNI config has no network name")
	case a.ContainerID == "":
		return agentapi.Errorf(agentapi.CodeInvalidEnv, "no container ID (CNI_CONTAINERID)")
	case a.IfName == "":
		return agentapi.Errorf(agentapi.CodeInvalidEnv, "no interface name (CNI_IFNAME)")
	}
	return nil
}

// allocationError gives an IPAM failure its CNI code: a request the pools
// cannot serve is the user's to fix; anything else may pass.
func allocationError(who string, err error) error {
	for _, e := range []error{ipam.ErrNoUsablePool, ipam.ErrExhausted, ipam.ErrAddressInUse, ipam.ErrReserved,
		ipam.ErrNotInPool, ipam.ErrPoolDisabled, ipam.ErrUnknownPool, ipam.ErrBadRequest} {
		if errors.Is(err, e) {
			return agentapi.Errorf(agentapi.CodeAllocation, "assign an address to %s: %w", who, err)
		}
	}
	return agentapi.Errorf(agentapi.CodeTryAgainLater, "assign an address to %s: %w", who, err)
}

func describe(req *agentapi.AddRequest) string {
	if req.PodName != "" {
		return fmt.Sprintf("pod %s/%s (container %s)", req.PodNamespace, req.PodName, req.ContainerID)
	}
	return "container " + req.ContainerID
}

func firstNonEmpty(a, b []string) []string {
	if len(a) > 0 {
		return a
	}
	return b
}
