package lab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// Failure is one pod that could not reach another.
type Failure struct {
	From, To string
	Err      error
}

func (f Failure) String() string { return fmt.Sprintf("%s -> %s: %v", f.From, f.To, f.Err) }

// Connect tries a TCP connection from every pod to every other pod and
// checks that the right responder answers. It returns the pairs that
// failed.
func (l *Lab) Connect(ctx context.Context) []Failure {
	var fails []Failure
	for _, from := range l.st.Pods {
		for _, to := range l.st.Pods {
			if from.Name == to.Name {
				continue
			}
			if err := ask(ctx, from.NetNS, to); err != nil {
				fails = append(fails, Failure{From: from.Name, To: to.Name, Err: err})
			}
		}
	}
	return fails
}

// ask connects from inside netns to pod's responder and checks that the
// pod answers with its name.
func ask(ctx context.Context, netns string, pod Pod) error {
	got, err := Ask(ctx, netns, net.JoinHostPort(pod.IP.String(), fmt.Sprint(pod.Port)))
	if err != nil {
		return err
	}
	if got != pod.Name {
		return fmt.Errorf("%s:%d answered %q, want %q", pod.IP, pod.Port, got, pod.Name)
	}
	return nil
}

// Ask connects from inside the namespace netns to addr (host:port) and
// returns the line the responder there answers.
func Ask(ctx context.Context, netns, addr string) (string, error) {
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := dialIn(dctx, netns, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read from %s: %w", addr, err)
	}
	return strings.TrimSpace(line), nil
}

// WaitConnected repeats Connect until every pair connects or ctx ends; it
// returns how long that took and the last failures.
func (l *Lab) WaitConnected(ctx context.Context) (time.Duration, []Failure) {
	start := time.Now()
	for {
		fails := l.Connect(ctx)
		if len(fails) == 0 || ctx.Err() != nil {
			return time.Since(start), fails
		}
		select {
		case <-ctx.Done():
			return time.Since(start), fails
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Routes returns `ip route show proto 94` of a node (or the router).
func (l *Lab) Routes(node string) (string, error) {
	for _, n := range l.st.Nodes {
		if n.Name == node {
			out, err := exec.Command("ip", "-n", n.NetNS, "route", "show", "proto", "94").CombinedOutput()
			return string(out), err
		}
	}
	return "", fmt.Errorf("no node %q in the lab", node)
}

// NodeStatus runs `rhizomectl node status` on a node.
func (l *Lab) NodeStatus(node string, args ...string) (string, error) {
	for _, n := range l.st.Nodes {
		if n.Name == node {
			cmd := exec.Command("ip", append([]string{"netns", "exec", n.NetNS, l.bin("rhizomectl"), "node", "status", "--status-addr", statusAddr}, args...)...)
			out, err := cmd.CombinedOutput()
			return string(out), err
		}
	}
	return "", fmt.Errorf("no node %q in the lab", node)
}

func (l *Lab) nodeStatusWide(node string) (string, error) { return l.NodeStatus(node, "-o", "wide") }

// Ctl runs rhizomectl against the lab's datastore.
func (l *Lab) Ctl(args ...string) (string, error) { return l.ctl("", args...) }

// Report writes what an operator looks at: the pods with their addresses
// and nodes, the pools, the blocks, one node's BGP status and every node's
// rhizome routes.
func (l *Lab) Report(w io.Writer) error {
	if l.st.Kube != nil {
		args := []string{"get", "pods", "-o", "wide"}
		for _, p := range l.st.Pods {
			if p.Namespace != "default" {
				args = append(args, "--all-namespaces")
				break
			}
		}
		out, err := l.Kubectl("", args...)
		fmt.Fprintf(w, "$ kubectl %s\n%s", strings.Join(args, " "), out)
		if err != nil {
			return err
		}
		return l.report(w)
	}
	fmt.Fprintln(w, "$ kubectl get pods -o wide   # the lab's pods")
	tw := tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tIP\tNODE")
	pods := append([]Pod(nil), l.st.Pods...)
	sort.Slice(pods, func(i, j int) bool { return pods[i].Name < pods[j].Name })
	for _, p := range pods {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Name, p.IP, p.Node)
	}
	tw.Flush()
	return l.report(w)
}

// report is the rhizome part of Report.
func (l *Lab) report(w io.Writer) error {
	for _, args := range [][]string{{"get", "ippool", "-o", "wide"}, {"ipam", "show", "--show-blocks"}} {
		out, err := l.ctl("", args...)
		fmt.Fprintf(w, "\n$ rhizomectl %s\n%s", strings.Join(args, " "), out)
		if err != nil {
			return err
		}
	}
	var first string
	for _, n := range l.st.Nodes {
		if !n.Router {
			first = n.Name
			break
		}
	}
	out, err := l.NodeStatus(first)
	fmt.Fprintf(w, "\n$ rhizomectl node status   # on %s\n%s", first, out)
	if err != nil {
		return err
	}
	for _, n := range l.st.Nodes {
		out, err := l.Routes(n.Name)
		fmt.Fprintf(w, "\n$ ip route show proto 94   # on %s\n%s", n.Name, out)
		if err != nil {
			return err
		}
	}
	return nil
}

// Explore prints how to look around a lab left up.
func (l *Lab) Explore(w io.Writer) {
	n := l.st.Nodes[len(l.st.Nodes)-1]
	fmt.Fprintf(w, `The lab stays up. To look around:
  export RHIZOME_ETCD_ENDPOINTS=%s
  %s get nodes -o wide
  ip netns exec %s %s node status
  ip -n %s route show proto 94
  ip netns list | grep %s
Logs are in %s. Take it down with: make lab-down
`, l.st.Etcd, l.bin("rhizomectl"), n.NetNS, l.bin("rhizomectl"), n.NetNS, l.st.Prefix, filepath.Clean(l.opts.StateDir))
	if l.st.Kube != nil {
		fmt.Fprintf(w, "Kubernetes: %s --kubeconfig %s get pods -o wide\n", filepath.Join(l.st.Kube.BinDir, "kubectl"), l.st.Kube.Admin)
	}
}
