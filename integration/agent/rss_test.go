package agent_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/rhizome-net/rhizome/cni/agentapi"
)

// BenchmarkAgentRSS reports the agent's resident memory with 250 local
// pods (the address requests of 250 pods on one node, through its socket).
// make bench-agent prints it.
func BenchmarkAgentRSS(b *testing.B) {
	needRoot(b)
	for range b.N {
		measureRSS(b, 250)
	}
}

func measureRSS(b *testing.B, pods int) {
	c := newCluster(b)
	a := c.agent("node-a", "--ip", "10.99.0.1/24")
	client := agentapi.NewClient(a.socket)
	before := rssKB(b, a.cmd.Process.Pid)
	for i := range pods {
		req := &agentapi.AddRequest{Network: "k8s-pod-network", PodNamespace: "default", PodName: fmt.Sprintf("pod-%d", i)}
		req.ContainerID, req.IfName = fmt.Sprintf("ctr-%d", i), "eth0"
		if _, err := client.Add(context.Background(), req); err != nil {
			b.Fatalf("ADD %d: %v", i, err)
		}
	}
	after := rssKB(b, a.cmd.Process.Pid)
	b.ReportMetric(float64(after)/1024, "MB-RSS")
	fmt.Printf("rhizome-node RSS: %.1f MB idle, %.1f MB with %d local pods\n", float64(before)/1024, float64(after)/1024, pods)
}

func rssKB(b *testing.B, pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			var kb int
			fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(l, "VmRSS:")), "%d", &kb)
			return kb
		}
	}
	b.Fatalf("no VmRSS for %d", pid)
	return 0
}
