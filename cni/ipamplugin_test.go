package cni_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/cni/cnitest"
	"github.com/rhizome-net/rhizome/daemon/cnisvc/agenttest"
)

func TestPrivilegedIPAMWithBridge(t *testing.T) {
	cnitest.NeedRoot(t)
	refDir := cnitest.ReferencePlugins(t, "bridge")
	ag := agenttest.Start(t, agenttest.Pool("lan", "10.42.0.0/24"),
		agenttest.Object(&api.IPReservation{ObjectMeta: api.ObjectMeta{Name: "lan-gateway"}, Spec: api.IPReservationSpec{ReservedCIDRs: []string{"10.42.0.1"}}}))
	n := newNode(t, refDir)
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 10.96.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := cnitest.ConfList(t, "br-net", map[string]any{
		"type": "bridge", "bridge": fmt.Sprintf("rzbr%d", time.Now().UnixNano()%100000), "isGateway": true,
		"ipam": map[string]any{"type": "rhizome-ipam", "socket": ag.Socket, "gateway": "10.42.0.1",
			"routes": []map[string]any{{"dst": "0.0.0.0/0"}}, "resolvConf": resolv},
	})
	a, b := n.NewPod("default", "br-a"), n.NewPod("default", "br-b")
	resA, resB := n.Add(conf, a), n.Add(conf, b)
	for _, r := range []string{resA.IPs[0].Address.String(), resB.IPs[0].Address.String()} {
		if !strings.HasPrefix(r, "10.42.0.") || !strings.HasSuffix(r, "/24") || r == "10.42.0.1/24" {
			t.Fatalf("bridge pod address %s: want 10.42.0.x/24 (the pool's prefix), not the gateway", r)
		}
	}
	if resA.IPs[0].Gateway.String() != "10.42.0.1" || len(resA.Routes) != 1 || resA.Routes[0].GW.String() != "10.42.0.1" {
		t.Fatalf("gateway %v routes %v, want 10.42.0.1", resA.IPs[0].Gateway, resA.Routes)
	}
	if strings.Join(resA.DNS.Nameservers, ",") != "10.96.0.10" || len(resA.DNS.Search) != 2 || resA.DNS.Options[0] != "ndots:5" {
		t.Fatalf("DNS %+v, want the resolv.conf's", resA.DNS)
	}
	addrA, addrB := cnitest.PodAddr(t, resA), cnitest.PodAddr(t, resB)
	if err := cnitest.Ping(a.NetNS, addrB, 3*time.Second); err != nil {
		t.Errorf("pod a to pod b over the bridge: %v", err)
	}
	if err := cnitest.Ping(b.NetNS, addrA, 3*time.Second); err != nil {
		t.Errorf("pod b to pod a over the bridge: %v", err)
	}
	if err := n.CNI.CheckNetworkList(context.Background(), conf, a.RT); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	n.Del(conf, a)
	n.Del(conf, b)
	if got := ag.Allocated(); len(got) != 0 {
		t.Fatalf("after DEL allocated %v", got)
	}
}
