package crdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/ctl"
	"github.com/rhizome-net/rhizome/integration/kubetest"
)

// seedDir holds the seed resources of the articles rhizome's users come
// from, with apiVersion rhizome.io/v1 (api/testdata/README.md).
const seedDir = "../../api/testdata/rhizome"

// installCRDs applies manifests/crds to c and waits until the API server
// serves every CRD.
func installCRDs(t *testing.T, c *kubetest.Cluster) {
	t.Helper()
	if out, err := c.Kubectl(t, "apply", "-f", crdDir); err != nil {
		t.Fatalf("kubectl apply -f manifests/crds: %v\n%s", err, out)
	}
	args := []string{"wait", "--for=condition=Established", "--timeout=60s"}
	for _, k := range api.Kinds() {
		args = append(args, "crd/"+k.CRDPlural+"."+api.Group)
	}
	if out, err := c.Kubectl(t, args...); err != nil {
		t.Fatalf("CRDs not established: %v\n%s", err, out)
	}
}

// writeFile writes data to a new file in dir and returns its path.
func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// rhizomectl runs rhizomectl in-process against etcd and returns its
// standard output.
func rhizomectl(t *testing.T, endpoints []string, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	full := append([]string{"--etcd-endpoints", strings.Join(endpoints, ",")}, args...)
	if code := ctl.Main(full, ctl.Streams{In: strings.NewReader(""), Out: &out, Err: &errb}); code != 0 {
		t.Fatalf("rhizomectl %s: exit %d: %s", strings.Join(args, " "), code, errb.String())
	}
	return out.String()
}

// parseTable splits a table of aligned columns (kubectl's and rhizomectl's)
// into rows of cells keyed by the header's column names. Cells may hold
// spaces ("rack == \"0\""): columns are cut at the header's offsets.
func parseTable(t *testing.T, out string) (header []string, rows map[string]map[string]string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) == 0 || lines[0] == "" {
		t.Fatalf("no table in %q", out)
	}
	var starts []int
	h := lines[0]
	for i := 0; i < len(h); i++ {
		if h[i] != ' ' && (i == 0 || h[i-1] == ' ') {
			starts = append(starts, i)
		}
	}
	header = strings.Fields(h)
	if len(header) != len(starts) {
		t.Fatalf("header %q has a column name with a space", h)
	}
	rows = map[string]map[string]string{}
	for _, l := range lines[1:] {
		row := map[string]string{}
		for i, s := range starts {
			end := len(l)
			if i+1 < len(starts) && starts[i+1] < end {
				end = starts[i+1]
			}
			if s < len(l) {
				row[header[i]] = strings.TrimSpace(l[s:end])
			} else {
				row[header[i]] = ""
			}
		}
		rows[row[header[0]]] = row
	}
	return header, rows
}

// TestCRDsOnKubeAPIServer installs manifests/crds on a real kube-apiserver
// and checks what a user of kubectl sees: the seed pools apply with kubectl
// as with rhizomectl and print the same columns, `kubectl get nodes` still
// means Kubernetes Nodes, and the RhizomeNode status is a subresource.
func TestCRDsOnKubeAPIServer(t *testing.T) {
	c := kubetest.Start(t)
	installCRDs(t, c)
	dir := t.TempDir()

	// The seed files carry no-break spaces (U+00A0) from the web page they
	// were copied from: rhizome's decoder reads them as spaces, YAML
	// parsers do not, so kubectl gets them with ordinary spaces.
	seeds, err := filepath.Glob(filepath.Join(seedDir, "*.yaml"))
	if err != nil || len(seeds) == 0 {
		t.Fatalf("no seed files in %s: %v", seedDir, err)
	}
	setsBlockSize := map[string]bool{}
	for _, f := range seeds {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := api.Decode(raw)
		if err != nil {
			t.Fatalf("api.Decode %s: %v", f, err)
		}
		for _, o := range objs {
			if p, ok := o.(*api.IPPool); ok && p.Spec.BlockSize != 0 {
				setsBlockSize[p.Name] = true
			}
			api.SetDefaults(o)
			if err := api.Validate(o); err != nil {
				t.Errorf("%s: %v", f, err)
			}
		}
		clean := writeFile(t, dir, filepath.Base(f), bytes.ReplaceAll(raw, []byte("\u00a0"), []byte(" ")))
		if out, err := c.Kubectl(t, "apply", "--validate=strict", "-f", clean); err != nil {
			t.Errorf("kubectl apply -f %s: %v\n%s", f, err, out)
		}
		rhizomectl(t, c.Etcd().Endpoints(), "apply", "-f", f)
	}

	// kubectl get ippools -o wide prints rhizomectl's columns, with the
	// same values; a pool whose YAML leaves blockSize out shows an empty
	// cell (rhizomectl stores the family's default, the CRD cannot).
	kout, err := c.Kubectl(t, "get", "ippools", "-o", "wide")
	if err != nil {
		t.Fatalf("kubectl get ippools -o wide: %v", err)
	}
	rout := rhizomectl(t, c.Etcd().Endpoints(), "get", "ippool", "-o", "wide")
	t.Logf("kubectl get ippools -o wide:\n%s\nrhizomectl get ippool -o wide:\n%s", kout, rout)
	kHeader, kRows := parseTable(t, kout)
	rHeader, rRows := parseTable(t, rout)
	if strings.Join(kHeader, " ") != strings.Join(rHeader, " ") {
		t.Errorf("kubectl's columns %q, rhizomectl's %q", kHeader, rHeader)
	}
	if len(kRows) != len(rRows) || len(kRows) != 4 {
		t.Errorf("kubectl lists %d pools, rhizomectl %d, want the 4 seed pools", len(kRows), len(rRows))
	}
	for name, r := range rRows {
		k, ok := kRows[name]
		if !ok {
			t.Errorf("pool %s: listed by rhizomectl, not by kubectl", name)
			continue
		}
		for _, col := range rHeader {
			want := r[col]
			if col == "BLOCKSIZE" && !setsBlockSize[name] {
				want = ""
			}
			if k[col] != want {
				t.Errorf("pool %s, column %s: kubectl shows %q, want %q (rhizomectl: %q)", name, col, k[col], want, r[col])
			}
		}
	}
	// Without -o wide both show NAME, CIDR and SELECTOR.
	kout, err = c.Kubectl(t, "get", "ippools")
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := parseTable(t, kout); strings.Join(h, " ") != "NAME CIDR SELECTOR" {
		t.Errorf("kubectl get ippools: columns %q, want NAME CIDR SELECTOR", h)
	}

	// The other kinds print rhizomectl's columns too; a BGPPeer adds
	// NODESELECTOR, which rhizomectl folds into NODE.
	res := writeFile(t, dir, "ipreservation.yaml", []byte("apiVersion: rhizome.io/v1\nkind: IPReservation\nmetadata:\n  name: gateways\n"+
		"spec:\n  reservedCIDRs: [192.168.0.1, 192.168.1.0/30]\n"))
	if out, err := c.Kubectl(t, "apply", "--validate=strict", "-f", res); err != nil {
		t.Fatalf("kubectl apply IPReservation: %v\n%s", err, out)
	}
	rhizomectl(t, c.Etcd().Endpoints(), "apply", "-f", res)
	for _, tc := range []struct {
		kubectl, rhizomectl string
		extra               []string
	}{
		{"bgpconfigurations", "bgpconfig", nil},
		{"bgppeers", "bgppeer", []string{"NODESELECTOR"}},
		{"ipreservations", "ipreservation", nil},
	} {
		for _, wide := range [][]string{nil, {"-o", "wide"}} {
			kout, err := c.Kubectl(t, append([]string{"get", tc.kubectl}, wide...)...)
			if err != nil {
				t.Fatal(err)
			}
			rout := rhizomectl(t, c.Etcd().Endpoints(), append([]string{"get", tc.rhizomectl}, wide...)...)
			kh, _ := parseTable(t, kout)
			rh, _ := parseTable(t, rout)
			if wide != nil {
				rh = append(rh, tc.extra...)
			}
			if strings.Join(kh, " ") != strings.Join(rh, " ") {
				t.Errorf("kubectl get %s %v: columns %q, want rhizomectl's %q", tc.kubectl, wide, kh, rh)
			}
		}
	}
	out, err := c.Kubectl(t, "get", "ipreservation", "gateways")
	if err != nil || !strings.Contains(out, `["192.168.0.1","192.168.1.0/30"]`) {
		t.Errorf("kubectl get ipreservation gateways: %v\n%s", err, out)
	}

	// `kubectl get nodes` still lists Kubernetes Nodes; rhizome's record
	// is a RhizomeNode.
	ctx := context.Background()
	core := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "crdtest-core-node"}}
	if _, err := c.Client().CoreV1().Nodes().Create(ctx, core, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create core Node: %v", err)
	}
	rnode := writeFile(t, dir, "rnode.yaml", []byte(`apiVersion: rhizome.io/v1
kind: RhizomeNode
metadata:
  name: crdtest-rhizome-only
spec:
  bgp:
    ipv4Address: 10.0.0.5/24
    asNumber: 64600
status:
  ipsInUse: 99
`))
	if out, err := c.Kubectl(t, "apply", "--validate=strict", "-f", rnode); err != nil {
		t.Fatalf("kubectl apply RhizomeNode: %v\n%s", err, out)
	}
	out, err = c.Kubectl(t, "get", "nodes", "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out) != "node/crdtest-core-node" {
		t.Errorf("kubectl get nodes -o name: %q, want only the core Node node/crdtest-core-node", out)
	}
	for _, name := range []string{"rhizomenodes", "rhizomenode", "rnode"} {
		out, err := c.Kubectl(t, "get", name, "-o", "name")
		if err != nil || strings.TrimSpace(out) != "rhizomenode.rhizome.io/crdtest-rhizome-only" {
			t.Errorf("kubectl get %s -o name: %q, %v; want rhizomenode.rhizome.io/crdtest-rhizome-only", name, out, err)
		}
	}
	// The category lists every rhizome object.
	out, err = c.Kubectl(t, "get", "rhizome", "-o", "name")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ippool.rhizome.io/rack-0-ippool", "bgppeer.rhizome.io/peer-with-route-reflectors",
		"bgpconfiguration.rhizome.io/default", "rhizomenode.rhizome.io/crdtest-rhizome-only"} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("kubectl get rhizome -o name does not list %s:\n%s", want, out)
		}
	}

	// status is a subresource: an apply of the whole object does not set
	// it, a write to /status does.
	out, err = c.Kubectl(t, "get", "rhizomenode", "crdtest-rhizome-only", "-o", "jsonpath={.status.ipsInUse}")
	if err != nil || out != "" {
		t.Errorf("status after apply: %q, %v; want none (status is a subresource)", out, err)
	}
	if out, err := c.Kubectl(t, "patch", "rhizomenode", "crdtest-rhizome-only", "--subresource=status", "--type=merge",
		"-p", `{"status":{"ipsInUse":7,"ipsFree":57,"bgpPeersUp":1,"bgpPeers":2,"blocks":["10.244.0.0/26"],"lastHeartbeat":"2026-12-04T17:00:00Z"}}`); err != nil {
		t.Fatalf("patch status: %v\n%s", err, out)
	}
	out, err = c.Kubectl(t, "get", "rhizomenodes", "-o", "wide")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl get rhizomenodes -o wide:\n%s", out)
	h, rows := parseTable(t, out)
	if want := "NAME ASN IPV4 RRCLUSTERID BLOCKS IPSINUSE IPSFREE PEERSUP HEARTBEAT"; strings.Join(h, " ") != want {
		t.Errorf("kubectl get rhizomenodes -o wide: columns %q, want %s", h, want)
	}
	if r := rows["crdtest-rhizome-only"]; r["ASN"] != "64600" || r["IPV4"] != "10.0.0.5/24" || r["IPSINUSE"] != "7" ||
		r["IPSFREE"] != "57" || r["HEARTBEAT"] != "2026-12-04T17:00:00Z" {
		t.Errorf("kubectl get rhizomenodes -o wide: row %q", r)
	}
}

// badCase is one object the API server must refuse; the same object
// (kind translated back to rhizome's) must fail api.Validate on the same
// field.
type badCase struct {
	name  string
	kind  string // api kind
	yaml  string // metadata and spec, indented as in a document
	field string // the field the API server names
	text  string // more of the API server's message
}

// TestKubeAPIServerRefusesBadObjects applies broken objects with kubectl
// and checks that the API server refuses each and names the field, and
// that rhizome's own validation refuses the same YAML on the same field.
func TestKubeAPIServerRefusesBadObjects(t *testing.T) {
	c := kubetest.Start(t)
	installCRDs(t, c)
	dir := t.TempDir()

	cases := []badCase{
		{"non-canonical CIDR", api.KindIPPool, "spec:\n  cidr: 10.244.1.0/16\n", "spec.cidr", "is not canonical"},
		{"not a CIDR", api.KindIPPool, "spec:\n  cidr: 10.244.0.0\n", "spec.cidr", "must be a CIDR"},
		{"IPv6 not canonical", api.KindIPPool, "spec:\n  cidr: FD00:10::/64\n", "spec.cidr", "is not canonical"},
		{"link-local range", api.KindIPPool, "spec:\n  cidr: 169.254.0.0/20\n", "spec.cidr", "169.254.0.0/16"},
		{"both encapsulations", api.KindIPPool, "spec:\n  cidr: 10.9.0.0/16\n  ipipMode: Always\n  vxlanMode: CrossSubnet\n", "spec.vxlanMode", "cannot be combined with ipipMode"},
		{"IPIP on IPv6", api.KindIPPool, "spec:\n  cidr: fd00:9::/64\n  ipipMode: Always\n", "spec.ipipMode", "IPv6"},
		{"blockSize below 20", api.KindIPPool, "spec:\n  cidr: 10.9.0.0/16\n  blockSize: 19\n", "spec.blockSize", "greater than or equal to 20"},
		{"blockSize 33 on IPv4", api.KindIPPool, "spec:\n  cidr: 10.9.0.0/16\n  blockSize: 33\n", "spec.blockSize", "out of range 20-32"},
		{"blockSize 64 on IPv6", api.KindIPPool, "spec:\n  cidr: fd00:9::/48\n  blockSize: 64\n", "spec.blockSize", "out of range 116-128"},
		{"block larger than pool", api.KindIPPool, "spec:\n  cidr: 10.9.0.0/26\n  blockSize: 24\n", "spec.blockSize", "does not fit"},
		{"unknown ipipMode", api.KindIPPool, "spec:\n  cidr: 10.9.0.0/16\n  ipipMode: Sometimes\n", "spec.ipipMode", "Unsupported value"},
		{"unknown assignmentMode", api.KindIPPool, "spec:\n  cidr: 10.9.0.0/16\n  assignmentMode: Auto\n", "spec.assignmentMode", "Unsupported value"},
		{"unknown allowed use", api.KindIPPool, "spec:\n  cidr: 10.9.0.0/16\n  allowedUses: [Workload, Pods]\n", "spec.allowedUses[1]", "Unsupported value"},
		{"allowed use twice", api.KindIPPool, "spec:\n  cidr: 10.9.0.0/16\n  allowedUses: [Workload, Workload]\n", "spec.allowedUses[1]", "Duplicate value"},
		{"reservation not canonical", api.KindIPReservation, "spec:\n  reservedCIDRs: [10.0.0.0/28, 10.0.0.1/24]\n", "spec.reservedCIDRs[1]", "canonical CIDR"},
		{"reservation range of two families", api.KindIPReservation, "spec:\n  reservedCIDRs: [10.0.0.1-fd00::1]\n", "spec.reservedCIDRs[0]", "range of one family"},
		{"BGPConfiguration name", api.KindBGPConfiguration, "spec:\n  asNumber: 64512\n", "metadata.name", `"default"`},
		{"AS number 0", api.KindBGPConfiguration, "spec:\n  asNumber: 0\n", "spec.asNumber", "AS number 1-4294967295"},
		{"asdot out of range", api.KindBGPConfiguration, "spec:\n  asNumber: \"1.70000\"\n", "spec.asNumber", "AS number"},
		{"listen port", api.KindBGPConfiguration, "spec:\n  listenPort: 70000\n", "spec.listenPort", "less than or equal to 65535"},
		{"cluster ID not IPv4", api.KindBGPConfiguration, "spec:\n  routeReflectorClusterID: fd00::1\n", "spec.routeReflectorClusterID", "dotted IPv4"},
		{"mesh password both sources", api.KindBGPConfiguration, "spec:\n  meshPassword:\n    file: /etc/pw\n    secretKeyRef: {name: s, key: k}\n", "spec.meshPassword", "exactly one"},
		{"peerIP and peerSelector", api.KindBGPPeer, "spec:\n  peerIP: 10.0.0.1\n  asNumber: 64513\n  peerSelector: all()\n", "spec.peerSelector", "cannot be combined with peerIP"},
		{"peerIP without AS", api.KindBGPPeer, "spec:\n  peerIP: 10.0.0.1\n", "spec.asNumber", "required with peerIP"},
		{"peer port 0", api.KindBGPPeer, "spec:\n  peerIP: 10.0.0.1:0\n  asNumber: 64513\n", "spec.peerIP", "port 1-65535"},
		{"hold time 2", api.KindBGPPeer, "spec:\n  peerIP: 10.0.0.1\n  asNumber: 64513\n  holdSeconds: 2\n", "spec.holdSeconds", "at least 3"},
		{"unknown next hop mode", api.KindBGPPeer, "spec:\n  peerIP: 10.0.0.1\n  asNumber: 64513\n  nextHopMode: Never\n", "spec.nextHopMode", "Unsupported value"},
		{"node address not CIDR", api.KindNode, "spec:\n  bgp:\n    ipv4Address: 10.0.0.5\n", "spec.bgp.ipv4Address", "CIDR form"},
		{"multicast VXLAN MAC", api.KindNode, "spec:\n  vxlanTunnelMACAddr: 01:00:5e:00:00:01\n", "spec.vxlanTunnelMACAddr", "unicast"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k, err := api.LookupKind(tc.kind)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("bad-%d", i)
			if tc.kind == api.KindBGPConfiguration && tc.field != "metadata.name" {
				name = "default"
			}
			doc := func(kind string) []byte {
				return []byte(fmt.Sprintf("apiVersion: rhizome.io/v1\nkind: %s\nmetadata:\n  name: %s\n%s", kind, name, tc.yaml))
			}
			f := writeFile(t, dir, fmt.Sprintf("bad-%d.yaml", i), doc(k.CRDKind))
			out, err := c.Kubectl(t, "apply", "--validate=strict", "-f", f)
			if err == nil {
				t.Fatalf("kubectl apply accepted it:\n%s\n%s", doc(k.CRDKind), out)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.field+":") || !strings.Contains(msg, tc.text) {
				t.Errorf("the API server's error does not name %s with %q:\n%s", tc.field, tc.text, msg)
			}

			// rhizome's own decoding or validation refuses the same object
			// on the same field.
			apiField := strings.TrimSuffix(tc.field, "[1]")
			apiField = strings.TrimSuffix(apiField, "[0]")
			objs, err := api.Decode(doc(k.Kind))
			if err != nil {
				if !strings.Contains(err.Error(), apiField) {
					t.Errorf("api.Decode refuses it without naming %s: %v", apiField, err)
				}
				return
			}
			api.SetDefaults(objs[0])
			verr := api.Validate(objs[0])
			var ve *api.ValidationError
			if !errors.As(verr, &ve) {
				t.Fatalf("api.Validate accepts what the API server refuses (%v)", verr)
			}
			named := false
			for _, fe := range ve.Errors {
				named = named || strings.HasPrefix(fe.Field, apiField)
			}
			if !named {
				t.Errorf("api.Validate refuses it on other fields: %v", verr)
			}
		})
	}
}

// TestKubeAPIServerImmutableAndUnknownFields checks the rules that need a
// stored object or kubectl's field validation: a pool's cidr and effective
// blockSize cannot change, and an unknown field is refused (strict) or
// pruned with a warning.
func TestKubeAPIServerImmutableAndUnknownFields(t *testing.T) {
	c := kubetest.Start(t)
	installCRDs(t, c)
	dir := t.TempDir()
	apply := func(name, body string) error {
		t.Helper()
		f := writeFile(t, dir, name+".yaml", []byte("apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata:\n  name: imm\n"+body))
		_, err := c.Kubectl(t, "apply", "--validate=strict", "-f", f)
		return err
	}
	if err := apply("v1", "spec:\n  cidr: 10.250.0.0/16\n"); err != nil {
		t.Fatalf("create: %v", err)
	}
	// Writing the default block size out is no change.
	if err := apply("v2", "spec:\n  cidr: 10.250.0.0/16\n  blockSize: 26\n  natOutgoing: true\n"); err != nil {
		t.Fatalf("blockSize 26 on a pool that had the default: %v", err)
	}
	for _, tc := range []struct{ name, body, field, text string }{
		{"cidr", "spec:\n  cidr: 10.251.0.0/16\n  blockSize: 26\n", "spec.cidr", "is immutable"},
		{"blockSize", "spec:\n  cidr: 10.250.0.0/16\n  blockSize: 28\n", "spec.blockSize", "is immutable"},
		{"blockSize back to the default", "spec:\n  cidr: 10.250.0.0/16\n  blockSize: 26\n", "", ""},
		{"unknown field", "spec:\n  cidr: 10.250.0.0/16\n  blockSize: 26\n  natOutgoin: true\n", "", `unknown field "spec.natOutgoin"`},
	} {
		err := apply(tc.name, tc.body)
		switch {
		case tc.text == "" && err != nil:
			t.Errorf("%s: refused: %v", tc.name, err)
		case tc.text != "" && err == nil:
			t.Errorf("%s: accepted", tc.name)
		case tc.text != "" && (!strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), tc.text)):
			t.Errorf("%s: error does not name %s with %q: %v", tc.name, tc.field, tc.text, err)
		}
	}
	// rhizome's ValidateUpdate agrees on the immutable fields.
	oldPool := &api.IPPool{ObjectMeta: api.ObjectMeta{Name: "imm"}, Spec: api.IPPoolSpec{CIDR: "10.250.0.0/16"}}
	newPool := &api.IPPool{ObjectMeta: api.ObjectMeta{Name: "imm"}, Spec: api.IPPoolSpec{CIDR: "10.250.0.0/16", BlockSize: 28}}
	api.SetDefaults(newPool)
	if err := api.ValidateUpdate(oldPool, newPool); err == nil || !strings.Contains(err.Error(), "spec.blockSize is immutable") {
		t.Errorf("api.ValidateUpdate: %v, want spec.blockSize is immutable", err)
	}

	// Without strict validation the unknown field is pruned: the object is
	// stored without it.
	f := writeFile(t, dir, "warn.yaml", []byte("apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata:\n  name: pruned\nspec:\n  cidr: 10.252.0.0/16\n  natOutgoin: true\n"))
	if out, err := c.Kubectl(t, "apply", "--validate=warn", "-f", f); err != nil {
		t.Fatalf("apply --validate=warn: %v\n%s", err, out)
	}
	out, err := c.Kubectl(t, "get", "ippool", "pruned", "-o", "jsonpath={.spec}")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, `"natOutgoin"`) || !strings.Contains(out, `"cidr":"10.252.0.0/16"`) {
		t.Errorf("want the pool stored without the unknown field: %s", out)
	}
}

// goodCases are objects rhizome accepts that the CRDs must accept too: a
// schema stricter than api.Validate would refuse what rhizomectl applies.
var goodCases = []struct{ name, kind, yaml string }{
	{"IPv6 pool", api.KindIPPool, "spec:\n  cidr: fd00:10:244::/48\n  blockSize: 122\n  vxlanMode: Always\n  allowedUses: [Workload, Tunnel]\n"},
	{"IPv4 pool, every field", api.KindIPPool, "spec:\n  cidr: 10.10.0.0/16\n  blockSize: 32\n  ipipMode: CrossSubnet\n  vxlanMode: Never\n" +
		"  natOutgoing: true\n  disabled: true\n  nodeSelector: rack == \"0\"\n  namespaceSelector: team in (a, b)\n" +
		"  assignmentMode: Manual\n  allowedUses: [Tunnel, Workload]\n  disableBGPExport: true\n"},
	{"pool as large as its block", api.KindIPPool, "spec:\n  cidr: 10.11.0.0/26\n  blockSize: 26\n"},
	{"reservation of each form", api.KindIPReservation, "spec:\n  reservedCIDRs: [10.0.0.0/28, 10.0.1.5, 10.0.2.5-10.0.2.9, fd00::/120, fd00::5 - fd00::9]\n"},
	{"asdot AS number", api.KindBGPConfiguration, "spec:\n  asNumber: \"1.10\"\n  listenPort: 1179\n  routeReflectorClusterID: 244.0.0.2\n  logSeverity: Debug\n  gracefulRestartSeconds: 300\n  nodeToNodeMeshEnabled: true\n  meshPassword:\n    secretKeyRef: {name: bgp, key: password}\n"},
	{"per-node BGPConfiguration", api.KindBGPConfiguration, "spec:\n  asNumber: \"64514\"\n  logSeverityScreen: Warning\n"},
	{"IPv6 peer with port", api.KindBGPPeer, "spec:\n  node: node-1\n  peerIP: \"[fd00::1]:1179\"\n  asNumber: 4200000000\n  keepaliveSeconds: 10\n  holdSeconds: 30\n  gracefulRestartSeconds: 60\n  passive: true\n  nextHopMode: Self\n  sourceAddress: None\n  password:\n    file: /etc/rhizome/pw\n"},
	{"IPv4 peer with port", api.KindBGPPeer, "spec:\n  nodeSelector: rack == \"1\"\n  peerIP: 10.0.0.1:1179\n  asNumber: 64513\n"},
	{"node, every field", api.KindNode, "spec:\n  bgp:\n    ipv4Address: 10.0.0.5/24\n    ipv6Address: fd00::5/64\n    asNumber: 64600\n    routeReflectorClusterID: 244.0.0.1\n    ipv4TunnelAddr: 10.244.0.1\n" +
		"  ipv4VXLANTunnelAddr: 10.244.0.2\n  vxlanTunnelMACAddr: 02:5a:11:3c:0e:9f\n  ipv6VXLANTunnelAddr: fd00:10:244::1\n  vxlanTunnelMACAddrV6: 0e-5a-11-3c-0e-9f\n"},
}

// TestKubeAPIServerAcceptsGoodObjects applies objects that use every field
// in the forms rhizome accepts, and checks that api.Validate accepts them
// too.
func TestKubeAPIServerAcceptsGoodObjects(t *testing.T) {
	c := kubetest.Start(t)
	installCRDs(t, c)
	dir := t.TempDir()
	for i, tc := range goodCases {
		t.Run(tc.name, func(t *testing.T) {
			k, err := api.LookupKind(tc.kind)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("good-%d", i)
			switch {
			case tc.kind == api.KindBGPConfiguration && i%2 == 0:
				name = "default"
			case tc.kind == api.KindBGPConfiguration:
				name = "node.node-1"
			}
			doc := func(kind string) []byte {
				return []byte(fmt.Sprintf("apiVersion: rhizome.io/v1\nkind: %s\nmetadata:\n  name: %s\n%s", kind, name, tc.yaml))
			}
			objs, err := api.Decode(doc(k.Kind))
			if err != nil {
				t.Fatalf("api.Decode: %v", err)
			}
			api.SetDefaults(objs[0])
			if err := api.Validate(objs[0]); err != nil {
				t.Fatalf("api.Validate: %v", err)
			}
			f := writeFile(t, dir, name+".yaml", doc(k.CRDKind))
			if out, err := c.Kubectl(t, "apply", "--validate=strict", "-f", f); err != nil {
				t.Errorf("kubectl apply refused what rhizome accepts: %v\n%s", err, out)
			}
		})
	}
}
