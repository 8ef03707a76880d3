package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/cni/cnitest"
)

// tenNodes is two racks of five nodes behind the router, with a /20 pool
// per rack: room for 1,000 pods.
func tenNodes() *Topology {
	t := &Topology{
		Racks:  []Rack{{Name: "rack-0", Subnet: "10.0.0.0/24"}, {Name: "rack-1", Subnet: "10.0.1.0/24"}},
		Router: Router{Name: "router", RouteReflectorClusterID: "244.0.0.1"},
		Resources: `apiVersion: rhizome.io/v1
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false}
---
apiVersion: rhizome.io/v1
kind: IPPool
metadata: {name: rack-0-ippool}
spec: {cidr: 10.128.0.0/20, ipipMode: Never, nodeSelector: rack == "0"}
---
apiVersion: rhizome.io/v1
kind: IPPool
metadata: {name: rack-1-ippool}
spec: {cidr: 10.128.16.0/20, ipipMode: Never, nodeSelector: rack == "1"}
`,
	}
	for i := range 10 {
		t.Nodes = append(t.Nodes, Node{Name: fmt.Sprintf("node-%d", i), Rack: fmt.Sprintf("rack-%d", i/5), Labels: map[string]string{"rack": fmt.Sprint(i / 5)}})
	}
	return t
}

// BenchmarkLabPods (make bench-lab) times the lab coming up with 10 nodes
// and then 1,000 pods created through libcni and rhizome-cni, 100 per node,
// the ten nodes' runtimes working at once as ten kubelets would.
func BenchmarkLabPods(b *testing.B) {
	cnitest.NeedRoot(b)
	needBinaries(b)
	if binDir == "" {
		b.Skip("the lab's binaries were not built (TestMain runs as root only)")
	}
	for range b.N {
		opts := Options{BinDir: binDir, StateDir: filepath.Join(b.TempDir(), "lab"), Prefix: fmt.Sprintf("rzb%d-", os.Getpid()%100000)}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		start := time.Now()
		l, err := Up(ctx, tenNodes(), opts)
		if err != nil {
			cancel()
			b.Fatal(err)
		}
		up := time.Since(start)
		const perNode = 100
		nodes := l.podNodes()
		var wg sync.WaitGroup
		errs := make(chan error, len(nodes))
		start = time.Now()
		for _, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range perNode {
					if _, err := l.AddPod(ctx, fmt.Sprintf("%s-pod-%d", n, i), "bench", n, 0); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		took := time.Since(start)
		close(errs)
		for err := range errs {
			b.Error(err)
		}
		seen := map[netip.Addr]string{}
		for _, p := range l.State().Pods {
			if other, dup := seen[p.IP]; dup {
				b.Errorf("%s handed to both %s and %s", p.IP, other, p.Name)
			}
			seen[p.IP] = p.Name
		}
		out, err := l.Ctl("ipam", "check")
		if err != nil || !strings.Contains(out, "No problems found.") {
			b.Errorf("ipam check after the bench (%v):\n%s", err, out)
		}
		pods := len(l.State().Pods)
		fmt.Printf("lab with %d nodes and the router: up in %.1f s (etcd, agents ready, BGP settled)\n", len(nodes), up.Seconds())
		fmt.Printf("%d pods over %d nodes through libcni + rhizome-cni (the nodes' runtimes at once, %d each): %.1f s, %.0f pods/s, %d distinct addresses\n",
			pods, len(nodes), perNode, took.Seconds(), float64(pods)/took.Seconds(), len(seen))
		fmt.Println("context, not the same setup: SpiderPool's published 1,000 pods / 10 nodes test times Deployments from creation to Running in a")
		fmt.Println("  real cluster (containerd, images, kubelets): SpiderPool 182 s, Cilium 215 s, Calico 322 s (IPs sufficient; docs/concepts/ipam-performance.md)")
		if err := l.Down(); err != nil {
			b.Error(err)
		}
		cancel()
	}
}
