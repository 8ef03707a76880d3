package vm

import (
	"reflect"
	"strings"
	"testing"
)

// An excerpt of Debian 12's modules.dep and modules.builtin.
const testModulesDep = `kernel/net/ipv4/tunnel4.ko:
kernel/net/ipv4/ip_tunnel.ko:
kernel/net/ipv4/ipip.ko: kernel/net/ipv4/tunnel4.ko kernel/net/ipv4/ip_tunnel.ko
kernel/drivers/net/veth.ko:
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/netfilter/nf_tables.ko: kernel/net/netfilter/nfnetlink.ko kernel/lib/libcrc32c.ko
kernel/net/netfilter/nfnetlink.ko:
kernel/lib/libcrc32c.ko:
kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko:
`

const testModulesBuiltin = `kernel/crypto/crc32c_generic.ko
kernel/net/unix/unix.ko
`

func TestLoadOrderPutsDependenciesFirst(t *testing.T) {
	idx, err := parseModuleIndex(strings.NewReader(testModulesDep), strings.NewReader(testModulesBuiltin))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		names []string
		want  []string
	}{
		{[]string{"ipip"}, []string{"kernel/net/ipv4/tunnel4.ko", "kernel/net/ipv4/ip_tunnel.ko", "kernel/net/ipv4/ipip.ko"}},
		// Each module once, even when asked for again or needed twice.
		{[]string{"tunnel4", "ip_tunnel", "ipip", "veth"}, []string{"kernel/net/ipv4/tunnel4.ko", "kernel/net/ipv4/ip_tunnel.ko", "kernel/net/ipv4/ipip.ko", "kernel/drivers/net/veth.ko"}},
		{[]string{"bridge"}, []string{"kernel/net/llc/llc.ko", "kernel/net/802/stp.ko", "kernel/net/bridge/bridge.ko"}},
		// Built-in modules need no file; '-' and '_' are the same.
		{[]string{"unix", "crc32c-generic", "nf_tables"}, []string{"kernel/net/netfilter/nfnetlink.ko", "kernel/lib/libcrc32c.ko", "kernel/net/netfilter/nf_tables.ko"}},
	} {
		got, err := idx.loadOrder(tc.names)
		if err != nil {
			t.Errorf("loadOrder(%v): %v", tc.names, err)
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("loadOrder(%v) =\n%v\nwant\n%v", tc.names, got, tc.want)
		}
	}
}

func TestLoadOrderRejectsUnknownModulesAndCycles(t *testing.T) {
	idx, err := parseModuleIndex(strings.NewReader(testModulesDep+"a.ko: b.ko\nb.ko: a.ko\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := idx.loadOrder([]string{"ipip", "gre"}); err == nil || !strings.Contains(err.Error(), "gre") {
		t.Errorf("loadOrder with a module the kernel lacks: err = %v, want one naming gre", err)
	}
	if _, err := idx.loadOrder([]string{"a"}); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("loadOrder with a dependency cycle: err = %v, want a cycle error", err)
	}
	if _, err := parseModuleIndex(strings.NewReader("no colon here\n"), nil); err == nil {
		t.Error("parseModuleIndex accepted a line without a colon")
	}
}

func TestIsImagePackage(t *testing.T) {
	for pkg, want := range map[string]bool{
		"linux-image-6.1.0-56-cloud-amd64":       true,
		"linux-image-6.12.117+deb12-cloud-amd64": true,
		"linux-image-cloud-amd64":                false,
		"linux-image-6.12-cloud-amd64":           false,
		"linux-headers-6.1.0-56-cloud-amd64":     false,
		"linux-image-":                           false,
	} {
		if got := isImagePackage(pkg); got != want {
			t.Errorf("isImagePackage(%q) = %v, want %v", pkg, got, want)
		}
	}
}
