package kernel

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/rhizome-net/rhizome/integration/vm"
)

// node is a network namespace standing for one machine, with a netlink
// handle bound to it. Its namespace has no name and nothing in it is seen
// from outside, so concurrent runs cannot collide; closing the handle and
// the namespace file frees all of it, links included.
type node struct {
	ns netns.NsHandle
	h  *netlink.Handle
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces and netlink")
	}
}

func newNode(t *testing.T) *node {
	t.Helper()
	ns, err := newNamespace()
	if err != nil {
		t.Fatalf("create network namespace: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	// Only the route family: the default handle also opens XFRM and
	// netfilter sockets, which a minimal kernel refuses.
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatalf("netlink handle in namespace %s: %v", ns, err)
	}
	t.Cleanup(h.Close)
	n := &node{ns: ns, h: h}
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatalf("find lo: %v", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatalf("bring lo up: %v", err)
	}
	return n
}

// newNamespace creates a network namespace on a thread that is thrown away
// afterwards, so no other goroutine ever runs in it by accident.
func newNamespace() (netns.NsHandle, error) {
	type result struct {
		ns  netns.NsHandle
		err error
	}
	c := make(chan result, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine.
		runtime.LockOSThread()
		ns, err := netns.New()
		c <- result{ns, err}
	}()
	r := <-c
	return r.ns, r.err
}

// do runs fn with the calling thread in the node's namespace; sockets fn
// opens belong to that namespace for their lifetime. The thread is thrown
// away afterwards, like newNamespace's.
func (n *node) do(fn func() error) error {
	c := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(n.ns); err != nil {
			c <- fmt.Errorf("enter namespace %s: %w", n.ns, err)
			return
		}
		c <- fn()
	}()
	return <-c
}

// tunl0 adopts the node's IPIP fallback device the way the agent must:
// once module ipip is loaded the kernel makes tunl0 in every namespace, and
// creating it again fails with EEXIST. Where the kernel has no IPIP the
// test skips on a developer's host and fails inside the test VM.
func (n *node) tunl0(t *testing.T) netlink.Link {
	t.Helper()
	err := n.h.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: "tunl0"}})
	switch {
	case err == nil, errors.Is(err, unix.EEXIST):
	case errors.Is(err, unix.EOPNOTSUPP):
		if os.Getenv(vm.InsideEnv) != "" {
			t.Fatalf("kernel has no ipip inside the test VM: is ipip among the modules /init loads? (%v)", err)
		}
		t.Skip("kernel has no ipip: run make test-kernel")
	default:
		t.Fatalf("create or adopt tunl0: %v", err)
	}
	link, err := n.h.LinkByName("tunl0")
	if err != nil {
		t.Fatalf("adopt tunl0: %v", err)
	}
	if link.Type() != "ipip" {
		t.Fatalf("tunl0 is a %s device, want ipip", link.Type())
	}
	return link
}

// stats reads a link's counters again.
func (n *node) stats(t *testing.T, name string) netlink.LinkStatistics {
	t.Helper()
	link, err := n.h.LinkByName(name)
	if err != nil {
		t.Fatalf("read counters of %s: %v", name, err)
	}
	if link.Attrs().Statistics == nil {
		t.Fatalf("link %s reports no counters", name)
	}
	return *link.Attrs().Statistics
}
