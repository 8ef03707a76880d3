package cnisvc

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Annotations a pod or its namespace may carry to steer its addresses.
const (
	// AnnotationIPv4Pools is a JSON list of IPv4 pool names, used in order
	// (pod first, else namespace).
	AnnotationIPv4Pools = "rhizome.io/ipv4-pools"
	// AnnotationIPv6Pools is the same for IPv6.
	AnnotationIPv6Pools = "rhizome.io/ipv6-pools"
	// AnnotationIPAddrs is a JSON list of fixed addresses for the pod, at
	// most one per family. Only a pod may carry it.
	AnnotationIPAddrs = "rhizome.io/ip-addrs"
)

// Addressing is what the annotations ask for.
type Addressing struct {
	IPv4Pools []string
	IPv6Pools []string
	// Addrs are fixed addresses; when set, pools are not used.
	Addrs []netip.Addr
}

// ParseAnnotations reads the addressing annotations of a pod and of its
// namespace; a pod's annotation wins over its namespace's. The error names
// the annotation, where it was found, and what is wrong.
func ParseAnnotations(podAnn, nsAnn map[string]string) (Addressing, error) {
	var a Addressing
	var err error
	for _, p := range []struct {
		key  string
		dest *[]string
	}{{AnnotationIPv4Pools, &a.IPv4Pools}, {AnnotationIPv6Pools, &a.IPv6Pools}} {
		where, raw, ok := pick(p.key, podAnn, nsAnn)
		if !ok {
			continue
		}
		if *p.dest, err = parsePools(raw); err != nil {
			return Addressing{}, fmt.Errorf("annotation %s on the %s: %w", p.key, where, err)
		}
	}
	if raw, ok := podAnn[AnnotationIPAddrs]; ok {
		if a.Addrs, err = parseAddrs(raw); err != nil {
			return Addressing{}, fmt.Errorf("annotation %s on the pod: %w", AnnotationIPAddrs, err)
		}
		for _, k := range []string{AnnotationIPv4Pools, AnnotationIPv6Pools} {
			if _, both := podAnn[k]; both {
				return Addressing{}, fmt.Errorf("annotation %s on the pod: cannot be combined with %s on the same pod: keep one of them", AnnotationIPAddrs, k)
			}
		}
		// Fixed addresses replace the namespace's pools.
		a.IPv4Pools, a.IPv6Pools = nil, nil
	}
	return a, nil
}

func pick(key string, podAnn, nsAnn map[string]string) (where, raw string, ok bool) {
	if v, ok := podAnn[key]; ok {
		return "pod", v, true
	}
	if v, ok := nsAnn[key]; ok {
		return "namespace", v, true
	}
	return "", "", false
}

func parsePools(raw string) ([]string, error) {
	var names []string
	if err := json.Unmarshal([]byte(raw), &names); err != nil {
		return nil, fmt.Errorf("%q is not a JSON list of pool names like [\"pool-a\",\"pool-b\"]: %w", raw, err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%q names no pool: list at least one, or remove the annotation", raw)
	}
	for i, n := range names {
		if n == "" || strings.ContainsAny(n, "/ \t\r\n") {
			return nil, fmt.Errorf("pool name %q (item %d) is empty or contains '/' or spaces", n, i)
		}
		if slices.Contains(names[:i], n) {
			return nil, fmt.Errorf("pool %q is listed twice", n)
		}
	}
	return names, nil
}

func parseAddrs(raw string) ([]netip.Addr, error) {
	var strs []string
	if err := json.Unmarshal([]byte(raw), &strs); err != nil {
		return nil, fmt.Errorf("%q is not a JSON list of addresses like [\"10.0.0.5\"]: %w", raw, err)
	}
	if len(strs) == 0 {
		return nil, fmt.Errorf("%q lists no address: give one per family, or remove the annotation", raw)
	}
	var out []netip.Addr
	var v4, v6 bool
	for i, s := range strs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("item %d: %w", i, err)
		}
		if a.Zone() != "" || a.Is4In6() {
			return nil, fmt.Errorf("item %d: %s: give a plain IPv4 or IPv6 address, without zone or IPv4-in-IPv6 form", i, s)
		}
		if (a.Is4() && v4) || (a.Is6() && v6) {
			return nil, fmt.Errorf("item %d: %s: at most one IPv4 and one IPv6 address per pod", i, s)
		}
		v4, v6 = v4 || a.Is4(), v6 || a.Is6()
		out = append(out, a)
	}
	return out, nil
}
