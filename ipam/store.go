package ipam

import (
	"encoding/json"
	"fmt"
	"net/netip"
)

// This file is IPAM's storage format: the keys of its records and their
// encodings. Nothing outside package ipam reads or writes these keys; other
// packages use the functions of this package (NodeWatcher, ListBlocks,
// ByHandle, NodeHandles, ReadUsage, Check, ...).

// Key prefixes in the datastore.
const (
	blockPrefix    = "/rhizome/v1/ipam/blocks/"
	affinityPrefix = "/rhizome/v1/ipam/affinities/"
	handlePrefix   = "/rhizome/v1/ipam/handles/"
	configKey      = "/rhizome/v1/ipam/config"
)

// blockKey is the key of the block with the given CIDR.
func blockKey(cidr netip.Prefix) string { return blockPrefix + blockKeyName(cidr) }

// affinityKey is the key of node's affinity to the block cidr.
func affinityKey(node string, cidr netip.Prefix) string {
	return affinityPrefix + node + "/" + blockKeyName(cidr)
}

// handleKey is the key of one allocation handle. Handles start with their
// network's name ("<network>.<containerID>.<ifname>"), so the handles of a
// network are the keys under handleKey(network + ".").
func handleKey(handle string) string { return handlePrefix + handle }

func decodeBlock(data []byte) (*Block, error) {
	var b Block
	if err := json.Unmarshal(data, &b); err != nil {
		return nil, fmt.Errorf("decode block: %w", err)
	}
	return &b, nil
}

func decodeAffinity(data []byte) (Affinity, error) {
	var a Affinity
	if err := json.Unmarshal(data, &a); err != nil {
		return a, fmt.Errorf("decode affinity: %w", err)
	}
	return a, nil
}

func decodeHandle(data []byte) (Handle, error) {
	var h Handle
	if err := json.Unmarshal(data, &h); err != nil {
		return h, fmt.Errorf("decode handle: %w", err)
	}
	if h.Blocks == nil {
		h.Blocks = map[string]int{}
	}
	return h, nil
}
