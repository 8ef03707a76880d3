package ipam

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// Random allocate/release sequences keep a block consistent: the free list,
// the allocations and the attributes agree after every step, released
// addresses go to the tail of the free list, and sequence numbers grow.
func TestBlockBookkeepingProperties(t *testing.T) {
	for _, cidr := range []string{"10.0.0.64/26", "10.1.0.0/30", "fd00::40/122", "10.2.0.7/32"} {
		t.Run(cidr, func(t *testing.T) {
			p := netip.MustParsePrefix(cidr)
			for seed := uint64(0); seed < 20; seed++ {
				rng := rand.New(rand.NewPCG(seed, 1))
				b := newBlock(p, "n1")
				held := map[int]uint64{} // ordinal -> seq
				var lastSeq uint64
				for step := 0; step < 400; step++ {
					if len(b.Unallocated) > 0 && (len(held) == 0 || rng.IntN(3) > 0) {
						n := b.Unallocated[rng.IntN(len(b.Unallocated))]
						seq, err := b.allocate(n, Attribute{Handle: "h" + string(rune('a'+n%26))})
						if err != nil {
							t.Fatal(err)
						}
						if seq <= lastSeq {
							t.Fatalf("sequence went from %d to %d", lastSeq, seq)
						}
						lastSeq = seq
						held[n] = seq
						if _, err := b.allocate(n, Attribute{Handle: "x"}); err == nil {
							t.Fatalf("ordinal %d allocated twice", n)
						}
					} else {
						keys := make([]int, 0, len(held))
						for k := range held {
							keys = append(keys, k)
						}
						slices.Sort(keys)
						n := keys[rng.IntN(len(keys))]
						attr, ok := b.release(n)
						if !ok || attr.Seq != held[n] {
							t.Fatalf("release %d: ok=%v seq %d, want %d", n, ok, attr.Seq, held[n])
						}
						delete(held, n)
						if b.Unallocated[len(b.Unallocated)-1] != n {
							t.Fatalf("released ordinal %d is not at the tail of the free list %v", n, b.Unallocated)
						}
						if _, ok := b.release(n); ok {
							t.Fatalf("ordinal %d released twice", n)
						}
					}
					if err := b.verify(); err != nil {
						t.Fatalf("seed %d step %d: %v", seed, step, err)
					}
					if b.inUse() != len(held) {
						t.Fatalf("inUse %d, model %d", b.inUse(), len(held))
					}
					for n, seq := range held {
						if a, ok := b.attributeOf(n); !ok || a.Seq != seq {
							t.Fatalf("ordinal %d: attribute %+v ok=%v, want seq %d", n, a, ok, seq)
						}
					}
				}
			}
		})
	}
}

func TestBlockCloneIsDeep(t *testing.T) {
	b := newBlock(netip.MustParsePrefix("10.0.0.0/30"), "n1")
	if _, err := b.allocate(1, Attribute{Handle: "a"}); err != nil {
		t.Fatal(err)
	}
	c := b.clone()
	if _, err := c.allocate(2, Attribute{Handle: "b"}); err != nil {
		t.Fatal(err)
	}
	c.release(1)
	if b.inUse() != 1 || len(b.Attributes) != 1 || b.Attributes[0].Handle != "a" {
		t.Fatalf("changing the clone changed the original: %+v", b)
	}
	if err := b.verify(); err != nil {
		t.Fatal(err)
	}
}

func TestFreeCandidatesSkipsReservedInFIFOOrder(t *testing.T) {
	b := newBlock(netip.MustParsePrefix("10.0.0.0/29"), "n1")
	skip := func(a netip.Addr) bool {
		return a == netip.MustParseAddr("10.0.0.0") || a == netip.MustParseAddr("10.0.0.2")
	}
	got := b.freeCandidates(3, skip)
	if !slices.Equal(got, []int{1, 3, 4}) {
		t.Fatalf("freeCandidates = %v, want [1 3 4]", got)
	}
}

func TestAddressMath(t *testing.T) {
	for _, tc := range []struct {
		block string
		n     int
		addr  string
	}{
		{"10.0.0.64/26", 0, "10.0.0.64"},
		{"10.0.0.64/26", 63, "10.0.0.127"},
		{"10.0.255.192/26", 63, "10.0.255.255"},
		{"fd00::40/122", 5, "fd00::45"},
		{"fd00:0:0:0:ffff:ffff:ffff:ffc0/122", 63, "fd00::ffff:ffff:ffff:ffff"},
	} {
		p := netip.MustParsePrefix(tc.block)
		got := addrAt(p, tc.n)
		if got.String() != tc.addr {
			t.Errorf("addrAt(%s, %d) = %s, want %s", tc.block, tc.n, got, tc.addr)
		}
		if o := ordinal(p, got); o != tc.n {
			t.Errorf("ordinal(%s, %s) = %d, want %d", tc.block, got, o, tc.n)
		}
	}
	if got := lastAddr(netip.MustParsePrefix("192.168.0.0/24")); got.String() != "192.168.0.255" {
		t.Errorf("lastAddr = %s", got)
	}
	if got := addrToU128(netip.MustParseAddr("::1:0:0:0:0")).sub(u128{0, 1}); got != (u128{0, ^uint64(0)}) {
		t.Errorf("borrow across halves: %+v", got)
	}
	if got := (u128{0, ^uint64(0)}).add(u128{0, 1}); got != (u128{1, 0}) {
		t.Errorf("carry across halves: %+v", got)
	}
	for _, s := range []string{"10.244.3.64/26", "fd00::40/122"} {
		p := netip.MustParsePrefix(s)
		back, err := parseBlockKeyName(blockKeyName(p))
		if err != nil || back != p {
			t.Errorf("block key round trip %s -> %s -> %v (%v)", s, blockKeyName(p), back, err)
		}
	}
}

// The probe order visits every block of a pool exactly once, and different
// nodes start at different blocks.
func TestProbeOrderIsAPermutation(t *testing.T) {
	for _, tc := range []struct {
		cidr      string
		blockSize int
	}{{"10.0.0.0/16", 26}, {"10.0.0.0/24", 26}, {"10.0.0.0/26", 26}, {"fd00::/112", 122}} {
		pl := &pool{cidr: netip.MustParsePrefix(tc.cidr)}
		pl.IPPool = newTestPool("p", tc.cidr, tc.blockSize)
		starts := map[netip.Prefix]bool{}
		for _, node := range []string{"kube-node-0", "kube-node-1", "kube-node-2", "kube-node-3"} {
			start, step, bitsN := probeOrder(pl, node)
			n := 1 << bitsN
			seen := map[netip.Prefix]bool{}
			for i := 0; i < n; i++ {
				c := blockAt(pl, start.add(u128{0, uint64(i)}.mul(step)).mask(bitsN))
				if !pl.cidr.Contains(c.Addr()) || c.Bits() != tc.blockSize {
					t.Fatalf("%s: block %s outside the pool", tc.cidr, c)
				}
				seen[c] = true
				if i == 0 {
					starts[c] = true
				}
			}
			if len(seen) != n {
				t.Fatalf("%s node %s: %d distinct blocks in %d probes", tc.cidr, node, len(seen), n)
			}
		}
		if n := 1 << (tc.blockSize - pl.cidr.Bits()); n >= 64 && len(starts) < 3 {
			t.Errorf("%s: 4 nodes start at only %d distinct blocks", tc.cidr, len(starts))
		}
	}
}
