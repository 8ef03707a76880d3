package api

import (
	"fmt"
	"strings"
)

// KindInfo describes one resource kind: its names and a constructor.
type KindInfo struct {
	// Kind is the name in YAML ("IPPool").
	Kind string
	// Plural is the lowercase plural ("ippools"), used in datastore keys
	// and CLI output.
	Plural string
	// Aliases are every lowercase name the CLI accepts: singular, plural
	// and short names.
	Aliases []string
	// New returns an empty object of the kind, with TypeMeta set.
	New func() Object
	// CRDKind is the kind of the CustomResourceDefinition that stores the
	// kind in the Kubernetes API (manifests/crds): Kind, except for Node,
	// stored as RhizomeNode so that it does not shadow the core Node kind.
	CRDKind string
	// CRDPlural is the CRD's resource name ("ippools", "rhizomenodes"):
	// the CRD is named CRDPlural + "." + Group.
	CRDPlural string
}

// Group is the API group of rhizome's resources and of their
// CustomResourceDefinitions.
const Group = "rhizome.io"

// KindRhizomeNode is the CRD kind of a rhizome Node in the Kubernetes API.
const KindRhizomeNode = "RhizomeNode"

// Kinds returns the five resource kinds, in the order IPPool,
// IPReservation, BGPConfiguration, BGPPeer, Node. The result is a new slice
// on every call; callers may modify it.
func Kinds() []KindInfo {
	return []KindInfo{
		{
			Kind: KindIPPool, Plural: "ippools", CRDKind: KindIPPool, CRDPlural: "ippools",
			Aliases: []string{"ippool", "ippools", "pool", "pools"},
			New:     func() Object { return &IPPool{TypeMeta: TypeMeta{APIVersion: GroupVersion, Kind: KindIPPool}} },
		},
		{
			Kind: KindIPReservation, Plural: "ipreservations", CRDKind: KindIPReservation, CRDPlural: "ipreservations",
			Aliases: []string{"ipreservation", "ipreservations", "ipres"},
			New: func() Object {
				return &IPReservation{TypeMeta: TypeMeta{APIVersion: GroupVersion, Kind: KindIPReservation}}
			},
		},
		{
			Kind: KindBGPConfiguration, Plural: "bgpconfigurations", CRDKind: KindBGPConfiguration, CRDPlural: "bgpconfigurations",
			Aliases: []string{"bgpconfiguration", "bgpconfigurations", "bgpconfig", "bgpconfigs"},
			New: func() Object {
				return &BGPConfiguration{TypeMeta: TypeMeta{APIVersion: GroupVersion, Kind: KindBGPConfiguration}}
			},
		},
		{
			Kind: KindBGPPeer, Plural: "bgppeers", CRDKind: KindBGPPeer, CRDPlural: "bgppeers",
			Aliases: []string{"bgppeer", "bgppeers"},
			New:     func() Object { return &BGPPeer{TypeMeta: TypeMeta{APIVersion: GroupVersion, Kind: KindBGPPeer}} },
		},
		{
			Kind: KindNode, Plural: "nodes", CRDKind: KindRhizomeNode, CRDPlural: "rhizomenodes",
			Aliases: []string{"node", "nodes"},
			New:     func() Object { return &Node{TypeMeta: TypeMeta{APIVersion: GroupVersion, Kind: KindNode}} },
		},
	}
}

// LookupKind finds a kind by any of its names, ignoring case: the Kind
// itself ("IPPool") or one of its Aliases ("ippools", "pool").
func LookupKind(name string) (KindInfo, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	kinds := Kinds()
	for _, k := range kinds {
		if n == strings.ToLower(k.Kind) {
			return k, nil
		}
		for _, a := range k.Aliases {
			if n == a {
				return k, nil
			}
		}
	}
	return KindInfo{}, fmt.Errorf("unknown resource kind %q: use one of %s", name, describeKinds(kinds))
}

// New returns an empty object of the given Kind (exact spelling, as in
// YAML: "IPPool"), with TypeMeta set.
func New(kind string) (Object, error) {
	kinds := Kinds()
	for _, k := range kinds {
		if k.Kind == kind {
			return k.New(), nil
		}
	}
	return nil, fmt.Errorf("unknown kind %q: rhizome resources are %s", kind, kindNames(kinds))
}

// kindOf returns the Kind of one of this package's resource types, or ""
// for any other Object.
func kindOf(obj Object) string {
	switch obj.(type) {
	case *IPPool:
		return KindIPPool
	case *IPReservation:
		return KindIPReservation
	case *BGPConfiguration:
		return KindBGPConfiguration
	case *BGPPeer:
		return KindBGPPeer
	case *Node:
		return KindNode
	}
	return ""
}

// kindNames lists the Kinds: "IPPool, IPReservation, ...".
func kindNames(kinds []KindInfo) string {
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = k.Kind
	}
	return strings.Join(names, ", ")
}

// describeKinds lists the CLI names: "ippool (ippools, pool, pools), ...".
func describeKinds(kinds []KindInfo) string {
	parts := make([]string, len(kinds))
	for i, k := range kinds {
		parts[i] = k.Aliases[0] + " (" + strings.Join(k.Aliases[1:], ", ") + ")"
	}
	return strings.Join(parts, ", ")
}
