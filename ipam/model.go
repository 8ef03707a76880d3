// Package ipam allocates pod addresses from affine blocks stored in etcd.
//
// A pool is cut into blocks (/26 by default). A node claims blocks (its
// affine blocks) and hands out their addresses locally; every change to a
// block is a compare-and-swap on the block's revision, written together with
// the allocation's handle in one transaction. See docs/design.md §4.
package ipam

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/rhizome-net/rhizome/api"
)

// Attribute describes the owner of one allocated address.
type Attribute struct {
	Handle    string    `json:"handle"`
	Namespace string    `json:"namespace,omitempty"`
	Pod       string    `json:"pod,omitempty"`
	Node      string    `json:"node,omitempty"`
	Use       api.IPUse `json:"use,omitempty"`
	// Seq is the block's sequence number when the address was handed out,
	// so a late release of an address that was handed out again frees
	// nothing.
	Seq uint64 `json:"seq"`
}

// Owner formats who holds an address, for error messages.
func (a Attribute) Owner() string {
	switch {
	case a.Pod != "" && a.Namespace != "":
		return fmt.Sprintf("pod %s/%s (handle %s)", a.Namespace, a.Pod, a.Handle)
	case a.Pod != "":
		return fmt.Sprintf("pod %s (handle %s)", a.Pod, a.Handle)
	}
	return "handle " + a.Handle
}

// Block is the stored allocation state of one block.
type Block struct {
	CIDR netip.Prefix `json:"cidr"`
	// Affinity is the node the block is affine to; empty when none.
	Affinity string `json:"affinity,omitempty"`
	// Allocations has one entry per ordinal: nil when free, else an index
	// into Attributes.
	Allocations []*int `json:"allocations"`
	// Unallocated lists the free ordinals in FIFO order: allocation takes
	// from the head, release appends to the tail.
	Unallocated []int       `json:"unallocated"`
	Attributes  []Attribute `json:"attributes"`
	// Seq counts allocations made in the block.
	Seq uint64 `json:"sequenceNumber"`
}

// AffinityState is the life-cycle state of a node's claim on a block.
type AffinityState string

// Affinity states: a claim is pending until its block exists, confirmed
// after, and pendingDeletion while the block is being released.
const (
	AffinityPending         AffinityState = "pending"
	AffinityConfirmed       AffinityState = "confirmed"
	AffinityPendingDeletion AffinityState = "pendingDeletion"
)

// Affinity is the stored claim of a node on a block.
type Affinity struct {
	State AffinityState `json:"state"`
}

// Handle records which blocks hold the addresses of one allocation handle
// (a pod's "<network>.<containerID>.<ifname>", see cnisvc.HandleID), and
// the node that holds them. Its key starts with the handle, so the handles
// of one network are one prefix listing (NodeHandles).
type Handle struct {
	Blocks map[string]int `json:"blocks"`
	// Node is the node the addresses were allocated to, written in the
	// same transaction as the allocation. Empty in records written before
	// it existed: readers then look at the blocks.
	Node string `json:"node,omitempty"`
}

// Config is the cluster-wide IPAM configuration.
type Config struct {
	// StrictAffinity forbids borrowing addresses from other nodes' blocks.
	StrictAffinity bool `json:"strictAffinity"`
	// MaxBlocksPerNode caps the blocks one node may claim (0 = no limit).
	MaxBlocksPerNode int `json:"maxBlocksPerNode"`
	// AutoAllocateBlocks lets nodes claim blocks on demand.
	AutoAllocateBlocks bool `json:"autoAllocateBlocks"`
}

// DefaultConfig is the configuration when none is stored.
func DefaultConfig() Config {
	return Config{MaxBlocksPerNode: 20, AutoAllocateBlocks: true}
}

// ErrInvalidConfig is wrapped by the errors of DecodeConfig and of
// PatchConfig's validation.
var ErrInvalidConfig = errors.New("invalid")

// DecodeConfig parses a stored configuration, strictly.
func DecodeConfig(data []byte) (Config, error) {
	c := DefaultConfig()
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("ipam config: %w: %w", ErrInvalidConfig, err)
	}
	if c.MaxBlocksPerNode < 0 {
		return c, fmt.Errorf("ipam config: %w: maxBlocksPerNode %d must be 0 (no limit) or positive", ErrInvalidConfig, c.MaxBlocksPerNode)
	}
	return c, nil
}
