package ipam

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
	"strings"
)

// u128 is an unsigned 128-bit integer: enough to number every address and
// every block of an IPv6 pool.
type u128 struct{ hi, lo uint64 }

func addrToU128(a netip.Addr) u128 {
	b := a.As16()
	return u128{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])}
}

func u128ToAddr(v u128, is4 bool) netip.Addr {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], v.hi)
	binary.BigEndian.PutUint64(b[8:], v.lo)
	a := netip.AddrFrom16(b)
	if is4 {
		return a.Unmap()
	}
	return a
}

func (v u128) add(w u128) u128 {
	lo, carry := bits.Add64(v.lo, w.lo, 0)
	hi, _ := bits.Add64(v.hi, w.hi, carry)
	return u128{hi, lo}
}

func (v u128) sub(w u128) u128 {
	lo, borrow := bits.Sub64(v.lo, w.lo, 0)
	hi, _ := bits.Sub64(v.hi, w.hi, borrow)
	return u128{hi, lo}
}

func (v u128) mul(w u128) u128 {
	hi, lo := bits.Mul64(v.lo, w.lo)
	hi += v.hi*w.lo + v.lo*w.hi
	return u128{hi, lo}
}

// shl shifts left by n < 128.
func (v u128) shl(n uint) u128 {
	switch {
	case n == 0:
		return v
	case n >= 64:
		return u128{v.lo << (n - 64), 0}
	}
	return u128{v.hi<<n | v.lo>>(64-n), v.lo << n}
}

// mask keeps the low n bits (n <= 128).
func (v u128) mask(n uint) u128 {
	switch {
	case n >= 128:
		return v
	case n >= 64:
		return u128{v.hi & (1<<(n-64) - 1), v.lo}
	}
	return u128{0, v.lo & (1<<n - 1)}
}

func (v u128) less(w u128) bool {
	return v.hi < w.hi || (v.hi == w.hi && v.lo < w.lo)
}

// addrBits is the number of bits of an address of a's family.
func addrBits(a netip.Addr) int {
	if a.Is4() {
		return 32
	}
	return 128
}

// ordinal is the offset of addr inside block (which must contain it).
func ordinal(block netip.Prefix, addr netip.Addr) int {
	return int(addrToU128(addr).sub(addrToU128(block.Addr())).lo)
}

// addrAt is the address at ordinal n of block.
func addrAt(block netip.Prefix, n int) netip.Addr {
	return u128ToAddr(addrToU128(block.Addr()).add(u128{0, uint64(n)}), block.Addr().Is4())
}

// blockSizeOf is the number of addresses in a block of prefix length bits.
func blockLen(p netip.Prefix) int {
	return 1 << (addrBits(p.Addr()) - p.Bits())
}

// blockFor is the block of size blockBits that holds addr.
func blockFor(addr netip.Addr, blockBits int) netip.Prefix {
	p, _ := addr.Prefix(blockBits)
	return p
}

// lastAddr is the last address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	host := uint(addrBits(p.Addr()) - p.Bits())
	all := u128{^uint64(0), ^uint64(0)}.mask(host)
	return u128ToAddr(addrToU128(p.Addr()).add(all), p.Addr().Is4())
}

// blockKeyName turns a block CIDR into the last element of its key:
// 10.244.3.64/26 -> 10.244.3.64-26 (etcd keys keep "/" for hierarchy).
func blockKeyName(p netip.Prefix) string {
	return strings.Replace(p.String(), "/", "-", 1)
}

// parseBlockKeyName reverses blockKeyName.
func parseBlockKeyName(s string) (netip.Prefix, error) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return netip.ParsePrefix(s)
	}
	return netip.ParsePrefix(s[:i] + "/" + s[i+1:])
}
