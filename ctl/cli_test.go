package ctl_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/cni/cnitest"
	"github.com/rhizome-net/rhizome/datastore/etcdtest"
)

// The tests drive the real rhizomectl binary against a real embedded etcd,
// the way an operator would.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func rhizomectlBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "rhizomectl-test-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "rhizomectl")
		// The flags of make build: under make test the command's packages
		// are compiled once for every test that runs a binary.
		buildErr = cnitest.Build(dir, "github.com/rhizome-net/rhizome/cmd/rhizomectl")
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// cli runs rhizomectl against one etcd.
type cli struct {
	t         *testing.T
	bin       string
	endpoints string
	etcd      *etcdtest.Server
}

func newCLI(t *testing.T) *cli {
	t.Helper()
	srv := etcdtest.Start(t)
	return &cli{t: t, bin: rhizomectlBinary(t), endpoints: strings.Join(srv.Endpoints(), ","), etcd: srv}
}

type result struct {
	stdout, stderr string
	code           int
}

func (c *cli) run(stdin string, args ...string) result {
	c.t.Helper()
	return c.runEnv(nil, stdin, args...)
}

// runEnv runs rhizomectl with env added to the environment.
func (c *cli) runEnv(env []string, stdin string, args ...string) result {
	c.t.Helper()
	cmd := exec.Command(c.bin, args...)
	cmd.Env = append(append(os.Environ(), "RHIZOME_ETCD_ENDPOINTS="+c.endpoints), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("run rhizomectl %v: %v", args, err)
	}
	return result{out.String(), errb.String(), code}
}

// ok runs a command that must succeed and returns its stdout.
func (c *cli) ok(stdin string, args ...string) string {
	c.t.Helper()
	r := c.run(stdin, args...)
	if r.code != 0 {
		c.t.Fatalf("rhizomectl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// fails runs a command that must fail with one error line on stderr
// containing every one of wants.
func (c *cli) fails(stdin string, args []string, wants ...string) string {
	c.t.Helper()
	r := c.run(stdin, args...)
	if r.code == 0 {
		c.t.Fatalf("rhizomectl %s succeeded, want failure\nstdout: %s", strings.Join(args, " "), r.stdout)
	}
	if lines := strings.Count(strings.TrimSpace(r.stderr), "\n") + 1; lines != 1 {
		c.t.Errorf("rhizomectl %s: want one error line on stderr, got %d:\n%s", strings.Join(args, " "), lines, r.stderr)
	}
	for _, w := range wants {
		if !strings.Contains(r.stderr, w) {
			c.t.Errorf("rhizomectl %s: stderr %q does not contain %q", strings.Join(args, " "), r.stderr, w)
		}
	}
	return r.stderr
}

func wantOutput(t *testing.T, what, got, want string) {
	t.Helper()
	if got != want {
		t.Errorf("%s:\n--- got ---\n%s--- want ---\n%s", what, got, want)
	}
}

const defaultPool = `apiVersion: rhizome.io/v1
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 192.168.0.0/16
  ipipMode: Always
  natOutgoing: true
`

// The rack pools exactly as seed 000 creates them with calicoctl, apiVersion
// included: Calico YAML applies unchanged.
const rack0Pool = `apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: rack-0-ippool
spec:
  cidr: 192.168.0.0/24
  ipipMode: Always
  natOutgoing: true
  nodeSelector: rack == "0"
`

const rack1Pool = `apiVersion: rhizome.io/v1
kind: IPPool
metadata:
  name: rack-1-ippool
spec:
  cidr: 192.168.1.0/24
  ipipMode: Always
  natOutgoing: true
  nodeSelector: rack == "1"
`

// TestSeed000Session replays seed 000: list the default pool, delete it,
// create one pool per rack with a node selector, list again.
func TestSeed000Session(t *testing.T) {
	c := newCLI(t)
	c.ok(defaultPool, "apply", "-f", "-")

	wantOutput(t, "get ippool -o wide (default pool)", c.ok("", "get", "ippool", "-o", "wide"), ""+
		"NAME                  CIDR             BLOCKSIZE   NAT    IPIPMODE   VXLANMODE   DISABLED   DISABLEBGPEXPORT   SELECTOR\n"+
		"default-ipv4-ippool   192.168.0.0/16   26          true   Always     Never       false      false              all()\n")

	wantOutput(t, "delete", c.ok("", "delete", "ippools", "default-ipv4-ippool"), "ippool/default-ipv4-ippool deleted\n")
	wantOutput(t, "create rack-0", c.ok(rack0Pool, "create", "-f", "-"), "ippool/rack-0-ippool created\n")
	wantOutput(t, "create rack-1", c.ok(rack1Pool, "create", "-f", "-"), "ippool/rack-1-ippool created\n")

	wantOutput(t, "get ippool -o wide (rack pools)", c.ok("", "get", "ippool", "-o", "wide"), ""+
		"NAME            CIDR             BLOCKSIZE   NAT    IPIPMODE   VXLANMODE   DISABLED   DISABLEBGPEXPORT   SELECTOR\n"+
		"rack-0-ippool   192.168.0.0/24   26          true   Always     Never       false      false              rack == \"0\"\n"+
		"rack-1-ippool   192.168.1.0/24   26          true   Always     Never       false      false              rack == \"1\"\n")

	wantOutput(t, "get ippools", c.ok("", "get", "ippools"), ""+
		"NAME            CIDR             SELECTOR\n"+
		"rack-0-ippool   192.168.0.0/24   rack == \"0\"\n"+
		"rack-1-ippool   192.168.1.0/24   rack == \"1\"\n")

	// Creating it again is refused and says what to do.
	c.fails(rack0Pool, []string{"create", "-f", "-"}, `IPPool "rack-0-ippool" already exists`, "apply")
}

// TestSeed004Resources replays the resource side of seed 004: mesh off and a
// global AS, a route reflector by node patch, per-node AS, the BGPPeer that
// selects route reflectors, pool migration by disabling the old pool.
func TestSeed004Resources(t *testing.T) {
	c := newCLI(t)
	c.ok(defaultPool, "apply", "-f", "-")

	wantOutput(t, "apply bgpconfig", c.ok(`apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
 name: default
spec:
  logSeverityScreen: Info
  nodeToNodeMeshEnabled: false
  asNumber: 63400
`, "apply", "-f", "-"), "bgpconfiguration/default created\n")
	wantOutput(t, "apply bgpconfig again", c.ok(`apiVersion: rhizome.io/v1
kind: BGPConfiguration
metadata:
  name: default
spec:
  logSeverityScreen: Info
  nodeToNodeMeshEnabled: false
  asNumber: 64513
`, "apply", "-f", "-"), "bgpconfiguration/default configured\n")
	wantOutput(t, "get bgpconfig", c.ok("", "get", "bgpconfig"), ""+
		"NAME      LOGSEVERITY   MESHENABLED   ASNUMBER\n"+
		"default   Info          false         64513\n")

	// Nodes are registered by their agents; here by hand.
	for _, n := range []string{"rke-node4", "node-1"} {
		c.ok(fmt.Sprintf("apiVersion: rhizome.io/v1\nkind: Node\nmetadata:\n  name: %s\nspec: {}\n", n), "apply", "-f", "-")
	}
	wantOutput(t, "patch rr", c.ok("", "patch", "node", "rke-node4", "-p", `{"spec": {"bgp": {"routeReflectorClusterID": "244.0.0.1"}}}`),
		"node/rke-node4 patched\n")
	// The seed prints this patch with typographic quotes; copied as is, it
	// must fail saying so.
	c.fails("", []string{"patch", "node", "node-1", "-p", `{"spec": {"bgp": {“asNumber”: “64514”}}}`},
		"typographic quotes", "use plain double quotes")
	wantOutput(t, "patch asn", c.ok("", "patch", "node", "node-1", "-p", `{"spec": {"bgp": {"asNumber": "64514"}}}`),
		"node/node-1 patched\n")
	wantOutput(t, "get nodes -o wide", c.ok("", "get", "nodes", "-o", "wide"), ""+
		"NAME        ASN       IPV4   RRCLUSTERID   BLOCKS   IPSINUSE   IPSFREE   PEERSUP   HEARTBEAT\n"+
		"node-1      64514     -      -             -        -          -         -         -\n"+
		"rke-node4   (64513)   -      244.0.0.1     -        -          -         -         -\n")

	wantOutput(t, "apply bgppeer", c.ok(`kind: BGPPeer
apiVersion: projectcalico.org/v3
metadata:
  name: peer-with-route-reflectors
spec:
  nodeSelector: all()
  peerSelector: route-reflector == 'true'
`, "apply", "-f", "-"), "bgppeer/peer-with-route-reflectors created\n")
	wantOutput(t, "get bgppeer", c.ok("", "get", "bgppeers"), ""+
		"NAME                         PEERIP                        NODE      ASN\n"+
		"peer-with-route-reflectors   (route-reflector == 'true')   (all())   (node)\n")

	// Pool migration: a new pool with another block size, the old one disabled.
	c.ok(`apiVersion: rhizome.io/v1
kind: IPPool
metadata:
  name: my-ippool
spec:
  blockSize: 24
  cidr: 10.0.0.0/16
  ipipMode: Always
  natOutgoing: true
`, "apply", "-f", "-")
	wantOutput(t, "disable", c.ok("", "patch", "ippool", "default-ipv4-ippool", "-p", `{"spec": {"disabled": true}}`),
		"ippool/default-ipv4-ippool patched\n")
	wantOutput(t, "get ippool -o wide", c.ok("", "get", "ippool", "-o", "wide"), ""+
		"NAME                  CIDR             BLOCKSIZE   NAT    IPIPMODE   VXLANMODE   DISABLED   DISABLEBGPEXPORT   SELECTOR\n"+
		"default-ipv4-ippool   192.168.0.0/16   26          true   Always     Never       true       false              all()\n"+
		"my-ippool             10.0.0.0/16      24          true   Always     Never       false      false              all()\n")

	// natOutgoing off, as seed 004 does with kubectl edit.
	c.ok("", "patch", "ippool", "my-ippool", "-p", `{"spec": {"natOutgoing": false}}`)
	if out := c.ok("", "get", "ippool", "my-ippool", "-o", "json"); !strings.Contains(out, `"cidr": "10.0.0.0/16"`) || strings.Contains(out, "natOutgoing") {
		t.Errorf("my-ippool after natOutgoing=false:\n%s", out)
	}
}

func TestValidationErrorsWriteNothing(t *testing.T) {
	c := newCLI(t)
	c.ok(rack0Pool, "apply", "-f", "-")

	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		wants []string
	}{
		{"not canonical", "apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.1/24}\n",
			[]string{"apply", "-f", "-"}, []string{`IPPool "p"`, "spec.cidr", "10.0.0.0/24"}},
		{"block size", "apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/16, blockSize: 19}\n",
			[]string{"apply", "-f", "-"}, []string{`IPPool "p"`, "spec.blockSize", "20-32"}},
		{"unknown field", "apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidrr: 10.0.0.0/16}\n",
			[]string{"apply", "-f", "-"}, []string{"cidrr"}},
		{"overlap", "apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 192.168.0.128/25}\n",
			[]string{"apply", "-f", "-"}, []string{`IPPool "p"`, "spec.cidr", "overlaps", "rack-0-ippool"}},
		{"link-local", "apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 169.254.0.0/24}\n",
			[]string{"apply", "-f", "-"}, []string{`IPPool "p"`, "spec.cidr", "169.254.0.0/16"}},
		{"or selector", "apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.9.0.0/16, nodeSelector: 'rack == \"0\" || rack == \"1\"'}\n",
			[]string{"apply", "-f", "-"}, []string{`IPPool "p"`, "spec.nodeSelector", "||"}},
		{"immutable cidr", strings.Replace(rack0Pool, "192.168.0.0/24", "192.168.4.0/24", 1),
			[]string{"apply", "-f", "-"}, []string{`IPPool "rack-0-ippool"`, "spec.cidr", "immutable"}},
		{"unknown kind", "", []string{"get", "ipool"}, []string{`"ipool"`, "ippool"}},
		{"not found", "", []string{"delete", "ippool", "nope"}, []string{`IPPool "nope" not found`}},
		{"bad patch", "", []string{"patch", "ippool", "rack-0-ippool", "-p", `{"spec": {"blockSize": 24}}`},
			[]string{`IPPool "rack-0-ippool"`, "spec.blockSize", "immutable"}},
		{"patch type", "", []string{"patch", "ippool", "rack-0-ippool", "-p", `{"spec": {"disabled": "yes"}}`},
			[]string{"disabled"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.t = t
			c.fails(tc.stdin, tc.args, tc.wants...)
		})
	}
	c.t = t

	// A file whose second document is invalid writes neither.
	c.fails("apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata: {name: good}\nspec: {cidr: 10.1.0.0/16}\n---\n"+
		"apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata: {name: bad}\nspec: {cidr: 10.2.0.0/16, ipipMode: Sometimes}\n",
		[]string{"apply", "-f", "-"}, "nothing was written", `IPPool "bad"`, "spec.ipipMode")
	wantOutput(t, "pools after failed applies", c.ok("", "get", "ippool"), ""+
		"NAME            CIDR             SELECTOR\n"+
		"rack-0-ippool   192.168.0.0/24   rack == \"0\"\n")
}

func TestReplaceWithStaleVersionConflicts(t *testing.T) {
	c := newCLI(t)
	c.ok(rack0Pool, "apply", "-f", "-")
	stale := c.ok("", "get", "ippool", "rack-0-ippool", "-o", "yaml")
	if !strings.Contains(stale, "resourceVersion:") {
		t.Fatalf("get -o yaml has no resourceVersion:\n%s", stale)
	}
	c.ok("", "patch", "ippool", "rack-0-ippool", "-p", `{"spec":{"natOutgoing":false}}`)
	c.fails(stale, []string{"replace", "-f", "-"}, `IPPool "rack-0-ippool"`, "changed since it was read")

	// The current version replaces fine.
	current := c.ok("", "get", "ippool", "rack-0-ippool", "-o", "yaml")
	wantOutput(t, "replace", c.ok(current, "replace", "-f", "-"), "ippool/rack-0-ippool replaced\n")
}

func TestYAMLRoundTrip(t *testing.T) {
	c := newCLI(t)
	c.ok(rack0Pool+"---\n"+rack1Pool, "apply", "-f", "-")
	dir := t.TempDir()
	file := filepath.Join(dir, "pools.yaml")
	if err := os.WriteFile(file, []byte(c.ok("", "get", "ippool", "-o", "yaml")), 0o600); err != nil {
		t.Fatal(err)
	}
	before := c.ok("", "get", "ippool", "-o", "wide")
	c.ok("", "delete", "-f", file)
	wantOutput(t, "recreate from get -o yaml", c.ok("", "apply", "-f", dir), "ippool/rack-0-ippool created\nippool/rack-1-ippool created\n")
	wantOutput(t, "pools after round trip", c.ok("", "get", "ippool", "-o", "wide"), before)
}

// TestUnreachableEtcd: a dead endpoint gives one clear line, quickly.
func TestUnreachableEtcd(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	c := &cli{t: t, bin: rhizomectlBinary(t), endpoints: dead}
	start := time.Now()
	c.fails("", []string{"get", "ippool", "--timeout", "1s"}, "etcd not reachable", strings.TrimPrefix(dead, "http://"), "1s")
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("unreachable etcd took %v to report, want about the 1s timeout", d)
	}
}
