package api

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func decodeOne(t *testing.T, data string) Object {
	t.Helper()
	objs, err := Decode([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 {
		t.Fatalf("got %d objects, want 1", len(objs))
	}
	return objs[0]
}

// The Calico YAML of the seeds (testdata/calico, verbatim, no-break spaces
// and all; testdata/rhizome is the same with apiVersion rhizome.io/v1)
// decodes, defaults and validates clean.
func TestDecodeSeeds(t *testing.T) {
	want := map[string]Object{
		"ippool-rack-0.yaml": &IPPool{ObjectMeta: ObjectMeta{Name: "rack-0-ippool"}, Spec: IPPoolSpec{
			CIDR: "192.168.0.0/24", BlockSize: 26, IPIPMode: EncapAlways, VXLANMode: EncapNever, NATOutgoing: true,
			NodeSelector: `rack == "0"`, AssignmentMode: AssignmentAutomatic, AllowedUses: []IPUse{UseWorkload, UseTunnel},
		}},
		"ippool-rack-1.yaml": &IPPool{ObjectMeta: ObjectMeta{Name: "rack-1-ippool"}, Spec: IPPoolSpec{
			CIDR: "192.168.1.0/24", BlockSize: 26, IPIPMode: EncapAlways, VXLANMode: EncapNever, NATOutgoing: true,
			NodeSelector: `rack == "1"`, AssignmentMode: AssignmentAutomatic, AllowedUses: []IPUse{UseWorkload, UseTunnel},
		}},
		"ippool-my-ippool.yaml": &IPPool{ObjectMeta: ObjectMeta{Name: "my-ippool"}, Spec: IPPoolSpec{
			CIDR: "192.0.0.0/16", BlockSize: 24, IPIPMode: EncapAlways, VXLANMode: EncapNever, NATOutgoing: true,
			NodeSelector: "all()", AssignmentMode: AssignmentAutomatic, AllowedUses: []IPUse{UseWorkload, UseTunnel},
		}},
		"ippool-pool-1.yaml": &IPPool{ObjectMeta: ObjectMeta{Name: "pool-1"}, Spec: IPPoolSpec{
			CIDR: "10.21.0.0/31", BlockSize: 31, IPIPMode: EncapNever, VXLANMode: EncapNever, NATOutgoing: true,
			NodeSelector: "all()", AssignmentMode: AssignmentAutomatic, AllowedUses: []IPUse{UseWorkload, UseTunnel},
		}},
		"bgpconfiguration-default.yaml": &BGPConfiguration{ObjectMeta: ObjectMeta{Name: "default"}, Spec: BGPConfigurationSpec{
			LogSeverity: "Info", NodeToNodeMeshEnabled: new(bool), ASNumber: NewASNumber(63400),
		}},
		"bgpconfiguration-as-64513.yaml": &BGPConfiguration{ObjectMeta: ObjectMeta{Name: "default"}, Spec: BGPConfigurationSpec{
			LogSeverity: "Info", NodeToNodeMeshEnabled: new(bool), ASNumber: NewASNumber(64513),
		}},
		"bgppeer-peer-with-route-reflectors.yaml": &BGPPeer{ObjectMeta: ObjectMeta{Name: "peer-with-route-reflectors"}, Spec: BGPPeerSpec{
			NodeSelector: "all()", PeerSelector: "route-reflector == 'true'", NextHopMode: NextHopAuto, SourceAddress: SourceAddressUseNodeIP,
		}},
	}
	for _, dir := range []string{"calico", "rhizome"} {
		files, err := filepath.Glob(filepath.Join("testdata", dir, "*.yaml"))
		if err != nil || len(files) != len(want) {
			t.Fatalf("testdata/%s: %d files, want %d (%v)", dir, len(files), len(want), err)
		}
		var all []byte
		for _, f := range files {
			data := readFile(t, f)
			all = append(append(all, "---\n"...), data...)
			t.Run(dir+"/"+filepath.Base(f), func(t *testing.T) {
				obj := decodeOne(t, string(data))
				if obj.GetTypeMeta().APIVersion != GroupVersion {
					t.Errorf("apiVersion %q not normalised", obj.GetTypeMeta().APIVersion)
				}
				SetDefaults(obj)
				if err := Validate(obj); err != nil {
					t.Fatal(err)
				}
				w := want[filepath.Base(f)]
				SetDefaults(w)
				if !reflect.DeepEqual(obj, w) {
					t.Errorf("got  %s\nwant %s", mustJSON(t, obj), mustJSON(t, w))
				}
			})
		}
		t.Run(dir+"/all-in-one", func(t *testing.T) {
			objs, err := Decode(all)
			if err != nil || len(objs) != len(want) {
				t.Fatalf("got %d objects, %v", len(objs), err)
			}
		})
	}
	// The seeds' selectors select what the seeds mean.
	rack0, _ := ParseSelector(`rack == "0"`)
	rr, _ := ParseSelector(`route-reflector == 'true'`)
	if !rack0.Matches(mapLabels{"rack": "0"}) || rack0.Matches(mapLabels{"rack": "1"}) ||
		!rr.Matches(mapLabels{"route-reflector": "true"}) || rr.Matches(mapLabels{}) {
		t.Error("seed selectors match the wrong nodes")
	}
}

type mapLabels map[string]string

func (m mapLabels) Has(k string) bool              { _, ok := m[k]; return ok }
func (m mapLabels) Get(k string) string            { return m[k] }
func (m mapLabels) Lookup(k string) (string, bool) { v, ok := m[k]; return v, ok }

// The copy of a seed whose indentation got lost on a web page fails with a
// hint.
func TestDecodeLostIndentation(t *testing.T) {
	_, err := Decode(readFile(t, "testdata/invalid/ippool-rack-0-indentation-lost.yaml"))
	// Keys come in alphabetical order, so cidr is the first unknown one.
	want := `document 1 (IPPool): unknown field "cidr": it belongs under spec (was the indentation lost?)`
	if err == nil || err.Error() != want {
		t.Errorf("got %v\nwant %s", err, want)
	}
}

func TestDecodeForms(t *testing.T) {
	const pool = "apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata:\n  name: %s\nspec:\n  cidr: %s\n"
	cases := []struct {
		name  string
		data  string
		names []string // of the decoded objects, in order
	}{
		{"one YAML", "apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata:\n  name: a\nspec:\n  cidr: 10.0.0.0/16\n", []string{"a"}},
		{"multi-document YAML",
			"# pools\n---\napiVersion: rhizome.io/v1\nkind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.0.0.0/16}\n" +
				"--- # the second\napiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: b}\nspec: {peerIP: 10.0.0.1, asNumber: 64513}\n" +
				"---\n\n---\n# only a comment\n---\napiVersion: rhizome.io/v1\nkind: Node\nmetadata: {name: c}\n---\n",
			[]string{"a", "b", "c"}},
		{"CRLF", "apiVersion: rhizome.io/v1\r\nkind: Node\r\nmetadata:\r\n  name: a\r\n---\r\napiVersion: rhizome.io/v1\r\nkind: Node\r\nmetadata:\r\n  name: b\r\n",
			[]string{"a", "b"}},
		{"BOM", "\xef\xbb\xbfapiVersion: rhizome.io/v1\nkind: Node\nmetadata:\n  name: a\n", []string{"a"}},
		{"JSON", `{"apiVersion":"rhizome.io/v1","kind":"IPPool","metadata":{"name":"a"},"spec":{"cidr":"10.0.0.0/16","blockSize":24}}`,
			[]string{"a"}},
		{"JSON stream", `{"apiVersion":"rhizome.io/v1","kind":"Node","metadata":{"name":"a"}}
			{"apiVersion":"rhizome.io/v1","kind":"Node","metadata":{"name":"b"}}`, []string{"a", "b"}},
		{"JSON stream with null", `{"apiVersion":"rhizome.io/v1","kind":"Node","metadata":{"name":"a"}} null {"apiVersion":"rhizome.io/v1","kind":"Node","metadata":{"name":"b"}}`,
			[]string{"a", "b"}},
		{"JSON with tabs", "{\n\t\"apiVersion\": \"rhizome.io/v1\",\n\t\"kind\": \"Node\",\n\t\"metadata\": {\"name\": \"a\"}\n}", []string{"a"}},
		{"List YAML", "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n" +
			"- apiVersion: rhizome.io/v1\n  kind: IPPool\n  metadata: {name: a}\n  spec: {cidr: 10.0.0.0/16}\n" +
			"- apiVersion: rhizome.io/v1\n  kind: Node\n  metadata: {name: b}\n", []string{"a", "b"}},
		{"List JSON", `{"kind":"List","items":[{"apiVersion":"rhizome.io/v1","kind":"Node","metadata":{"name":"a"}},` +
			`{"apiVersion":"rhizome.io/v1","kind":"Node","metadata":{"name":"b"}}]}`, []string{"a", "b"}},
		{"empty List", `{"apiVersion":"v1","kind":"List","items":[]}`, nil},
		{"Calico typed list", "apiVersion: projectcalico.org/v3\nkind: IPPoolList\nmetadata:\n  resourceVersion: \"123\"\nitems:\n" +
			"- apiVersion: projectcalico.org/v3\n  kind: IPPool\n  metadata: {name: a}\n  spec: {cidr: 10.0.0.0/16}\n" +
			"- metadata: {name: b}\n  spec: {cidr: 10.1.0.0/16}\n", []string{"a", "b"}},
		{"List then object", "kind: List\nitems:\n- {apiVersion: rhizome.io/v1, kind: Node, metadata: {name: a}}\n---\n" +
			"apiVersion: rhizome.io/v1\nkind: Node\nmetadata: {name: b}\n", []string{"a", "b"}},
		{"empty input", "", nil},
		{"only comments", "# nothing\n---\n# still nothing\n", nil},
		{"null documents", "null\n---\n~\n", nil},
		{"no-break spaces", "apiVersion:\u00a0rhizome.io/v1\nkind:\u00a0Node\nmetadata:\n\u00a0\u00a0name:\u00a0a\n", []string{"a"}},
		{"status of a node", "apiVersion: rhizome.io/v1\nkind: Node\nmetadata: {name: a}\nstatus: {bgpPeersUp: 2, bgpPeers: 3, blocks: [10.0.0.0/26]}\n",
			[]string{"a"}},
		{"string block size in YAML is a number", strings.ReplaceAll(pool, "%s", "x") + "  blockSize: 26\n", []string{"x"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := Decode([]byte(tc.data))
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, o := range objs {
				names = append(names, o.GetObjectMeta().Name)
				if tm := o.GetTypeMeta(); tm.APIVersion != GroupVersion || tm.Kind != kindOf(o) {
					t.Errorf("%s: TypeMeta %+v", o.GetObjectMeta().Name, tm)
				}
			}
			if !reflect.DeepEqual(names, tc.names) {
				t.Errorf("got %q, want %q", names, tc.names)
			}
		})
	}
}

// Decode does not apply defaults.
func TestDecodeNoDefaults(t *testing.T) {
	obj := decodeOne(t, "apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.0.0.0/16, ipipMode: always}\n")
	p := obj.(*IPPool)
	if p.Spec.BlockSize != 0 || p.Spec.IPIPMode != "always" || p.Spec.NodeSelector != "" {
		t.Errorf("defaults applied: %+v", p.Spec)
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct {
		name string
		data string
		want []string // substrings of the error
	}{
		{"unknown nested field",
			"apiVersion: rhizome.io/v1\nkind: Node\nmetadata: {name: node-1}\n---\n" +
				"apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata:\n  name: rack-0\nspec:\n  cidrr: 10.0.0.0/16\n",
			[]string{`document 2 (IPPool "rack-0"): unknown field "spec.cidrr"`}},
		{"unknown top-level field", "apiVersion: rhizome.io/v1\nkind: Node\nmetadata: {name: node-1}\nextra: 1\n",
			[]string{`document 1 (Node "node-1"): unknown field "extra"`}},
		{"unknown deep field", "apiVersion: rhizome.io/v1\nkind: BGPPeer\nmetadata: {name: p}\nspec:\n  password:\n    secretKeyRef: {name: s, key: k, optional: true}\n",
			[]string{`unknown field "spec.password.secretKeyRef.optional"`}},
		{"VXLAN MAC field case differs", "apiVersion: rhizome.io/v1\nkind: Node\nmetadata: {name: node-1}\nspec: {vxlanTunnelMacAddr: 66:0b:5e:22:91:c3}\n",
			[]string{`unknown field "spec.vxlanTunnelMacAddr"`}},
		{"VXLAN address not a string", "apiVersion: rhizome.io/v1\nkind: Node\nmetadata: {name: node-1}\nspec: {ipv4VXLANTunnelAddr: [192.168.0.1]}\n",
			[]string{`spec.ipv4VXLANTunnelAddr`}},
		{"field case differs", "apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {CIDR: 10.0.0.0/16}\n",
			[]string{`unknown field "spec.CIDR"`}},
		{"unknown field JSON", `{"apiVersion":"rhizome.io/v1","kind":"IPPool","metadata":{"name":"p"},"spec":{"cidrr":"x"}}`,
			[]string{`document 1 (IPPool "p"): unknown field "spec.cidrr"`}},
		{"duplicate key YAML", "apiVersion: rhizome.io/v1\nkind: Node\nmetadata: {name: node-1}\n---\n" +
			"apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata:\n  name: p\nspec:\n  cidr: 10.0.0.0/16\n  cidr: 10.1.0.0/16\n",
			[]string{`document 2 (IPPool "p"): invalid YAML: yaml: unmarshal errors: line 11: duplicate key "cidr"`}},
		{"duplicate key JSON", `{"apiVersion":"rhizome.io/v1","kind":"IPPool","metadata":{"name":"p"},"spec":{"cidr":"a","cidr":"b"}}`,
			[]string{`document 1 (IPPool "p"): duplicate field "spec.cidr"`}},
		{"duplicate label JSON", `{"apiVersion":"rhizome.io/v1","kind":"Node","metadata":{"name":"node-1","labels":{"a":"1","a":"2"}}}`,
			[]string{`duplicate field "metadata.labels.a"`}},
		{"missing apiVersion", "kind: IPPool\nmetadata: {name: p}\n",
			[]string{`document 1 (IPPool "p"): apiVersion is missing: set apiVersion: rhizome.io/v1`}},
		{"wrong apiVersion", "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {name: p}\n",
			[]string{`apiVersion "crd.projectcalico.org/v1" is not supported: rhizome resources use rhizome.io/v1`}},
		{"missing kind", "apiVersion: rhizome.io/v1\nmetadata: {name: p}\n",
			[]string{`document 1 ("p"): kind is missing: set kind to one of IPPool, IPReservation, BGPConfiguration, BGPPeer, Node`}},
		{"unknown kind", "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\n",
			[]string{`document 1 (FelixConfiguration "default"): unknown kind "FelixConfiguration": rhizome resources are IPPool`}},
		{"kind in the wrong case", "apiVersion: rhizome.io/v1\nkind: ippool\nmetadata: {name: p}\n",
			[]string{`unknown kind "ippool": did you mean IPPool?`}},
		{"not an object", "- a\n- b\n", []string{"document 1: expected an object with apiVersion, kind, metadata and spec, got a list"}},
		{"scalar", "hello\n", []string{"document 1: expected an object", `got a string "hello"`}},
		{"YAML syntax", "apiVersion: rhizome.io/v1\nkind: Node\n---\napiVersion: rhizome.io/v1\nkind: Node\nmetadata: [\n",
			[]string{"document 2: invalid YAML: yaml: line 6"}},
		{"tab indentation", "apiVersion: rhizome.io/v1\nkind: Node\nmetadata:\n\tname: node-1\n", []string{"document 1: invalid YAML"}},
		{"JSON syntax", `{"apiVersion": "rhizome.io/v1", "kind": }`, []string{"document 1: invalid JSON"}},
		{"typographic quotes", "{\"spec\": {\"bgp\": {\u201casNumber\u201d: \u201c64514\u201d}}}",
			[]string{"invalid JSON", "typographic quotes"}},
		{"string for a number", "apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/16, blockSize: \"26\"}\n",
			[]string{`spec.blockSize: expected a whole number, got the string "26"`}},
		{"number for a string", "apiVersion: rhizome.io/v1\nkind: Node\nmetadata:\n  name: node-1\n  labels: {rack: 0}\n",
			[]string{`metadata.labels.rack: expected a string, got the number 0: quote it ("0")`}},
		{"string for a bool", `{"apiVersion":"rhizome.io/v1","kind":"IPPool","metadata":{"name":"p"},"spec":{"disabled":"true"}}`,
			[]string{`spec.disabled: expected true or false, got the string "true"`}},
		{"fraction for an int", "apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {blockSize: 26.5}\n",
			[]string{"spec.blockSize: expected a whole number, got 26.5"}},
		{"huge int", `{"apiVersion":"rhizome.io/v1","kind":"BGPPeer","metadata":{"name":"p"},"spec":{"holdSeconds":99999999999999999999}}`,
			[]string{"spec.holdSeconds: number 99999999999999999999 is out of range"}},
		{"object for a list", "apiVersion: rhizome.io/v1\nkind: IPReservation\nmetadata: {name: r}\nspec: {reservedCIDRs: {a: b}}\n",
			[]string{"spec.reservedCIDRs: expected a list, got an object"}},
		{"bad AS number", "apiVersion: rhizome.io/v1\nkind: BGPPeer\nmetadata: {name: p}\nspec: {peerIP: 10.0.0.1, asNumber: 1.10}\n",
			[]string{`document 1 (BGPPeer "p"): spec.asNumber: AS number 1.1 is not a whole number`}},
		{"name not a string", "apiVersion: rhizome.io/v1\nkind: Node\nmetadata: {name: 5}\n",
			[]string{`document 1 (Node): metadata.name: expected a string, got the number 5`}},
		{"YAML 1.1 boolean", "apiVersion: rhizome.io/v1\nkind: Node\nmetadata:\n  name: node-1\n  labels: {enabled: yes}\n",
			[]string{`metadata.labels.enabled: expected a string, got true: quote it ("true"); YAML reads yes/no/on/off/y/n as booleans`}},
		{"kind not a string", "apiVersion: rhizome.io/v1\nkind: [IPPool]\n", []string{"document 1: kind: expected a string, got a list"}},
		{"List item unknown field", "apiVersion: v1\nkind: List\nitems:\n- apiVersion: rhizome.io/v1\n  kind: Node\n  metadata: {name: a}\n" +
			"- apiVersion: rhizome.io/v1\n  kind: IPPool\n  metadata: {name: b}\n  spec: {cidrr: x}\n",
			[]string{`document 1, item 2 (IPPool "b"): unknown field "spec.cidrr"`}},
		{"List unknown field", `{"kind":"List","items":[],"extra":1}`, []string{`document 1 (List): unknown field "extra"`}},
		{"List wrong apiVersion", `{"apiVersion":"apps/v1","kind":"List","items":[]}`, []string{`apiVersion "apps/v1" is not supported for a List`}},
		{"List item without apiVersion", `{"kind":"List","items":[{"kind":"Node","metadata":{"name":"a"}}]}`,
			[]string{`document 1, item 1 (Node "a"): apiVersion is missing`}},
		{"nested List", `{"kind":"List","items":[{"kind":"List","items":[]}]}`, []string{"document 1, item 1 (List): a list cannot contain lists"}},
		{"typed list with other kind", `{"apiVersion":"rhizome.io/v1","kind":"IPPoolList","items":[{"kind":"Node","metadata":{"name":"a"}}]}`,
			[]string{`document 1, item 1 (Node "a"): kind Node in the IPPoolList, which holds IPPool objects only`}},
		{"every failing document is reported", "kind: Node\nmetadata: {name: a}\n---\napiVersion: rhizome.io/v1\nkind: Node\nmetadata: {name: ok}\n---\n" +
			"apiVersion: rhizome.io/v1\nkind: Bogus\nmetadata: {name: c}\n",
			[]string{`document 1 (Node "a"): apiVersion is missing`, "\n", `document 3 (Bogus "c"): unknown kind`}},
		{"trailing garbage after JSON", `{"apiVersion":"rhizome.io/v1","kind":"Node","metadata":{"name":"a"}} x`, []string{"document 2: invalid JSON"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := Decode([]byte(tc.data))
			if err == nil {
				t.Fatalf("no error; decoded %d objects", len(objs))
			}
			if objs != nil {
				t.Errorf("objects returned with an error: %v", objs)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestDecodeInto(t *testing.T) {
	t.Run("JSON", func(t *testing.T) {
		p := &IPPool{Spec: IPPoolSpec{Disabled: true, NodeSelector: "stale"}}
		err := DecodeInto([]byte(`{"apiVersion":"projectcalico.org/v3","kind":"IPPool","metadata":{"name":"a","resourceVersion":"7"},"spec":{"cidr":"10.0.0.0/16"}}`), p)
		if err != nil {
			t.Fatal(err)
		}
		want := &IPPool{TypeMeta: TypeMeta{APIVersion: GroupVersion, Kind: KindIPPool},
			ObjectMeta: ObjectMeta{Name: "a", ResourceVersion: "7"}, Spec: IPPoolSpec{CIDR: "10.0.0.0/16"}}
		if !reflect.DeepEqual(p, want) {
			t.Errorf("got %+v, want %+v (obj must be reset first)", p, want)
		}
	})
	t.Run("YAML without TypeMeta", func(t *testing.T) {
		var n Node
		if err := DecodeInto([]byte("metadata:\n  name: node-1\nspec:\n  bgp:\n    ipv4Address: 10.0.0.5/24\n"), &n); err != nil {
			t.Fatal(err)
		}
		if n.Name != "node-1" || n.Spec.BGP.IPv4Address != "10.0.0.5/24" || n.Kind != KindNode || n.APIVersion != GroupVersion {
			t.Errorf("got %+v", n)
		}
	})
	errCases := []struct {
		name string
		data string
		obj  Object
		want string
	}{
		{"kind mismatch", `{"kind":"Node","metadata":{"name":"node-1"}}`, &IPPool{}, `Node "node-1": kind is "Node", expected IPPool`},
		{"unknown field", `{"metadata":{"name":"p"},"spec":{"cidrr":"x"}}`, &IPPool{}, `IPPool "p": unknown field "spec.cidrr"`},
		{"wrong apiVersion", `{"apiVersion":"v1","metadata":{"name":"p"}}`, &IPPool{}, `IPPool "p": apiVersion "v1" is not supported`},
		{"two documents", "metadata: {name: a}\n---\nmetadata: {name: b}\n", &Node{}, "more than one document"},
		{"two JSON objects", `{"metadata":{"name":"a"}} {"metadata":{"name":"b"}}`, &Node{}, "more than one object"},
		{"empty", "", &Node{}, "the input is empty"},
		{"list", `[1]`, &Node{}, "expected an object"},
		{"nil object", `{}`, (*Node)(nil), "not a rhizome resource"},
		{"nil interface", `{}`, nil, "not a rhizome resource"},
	}
	for _, tc := range errCases {
		t.Run(tc.name, func(t *testing.T) {
			err := DecodeInto([]byte(tc.data), tc.obj)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want error containing %q", err, tc.want)
			}
		})
	}
}

// fullObjects returns one object of each kind with every field set.
func fullObjects() []Object {
	f := false
	return []Object{
		&IPPool{ObjectMeta: ObjectMeta{Name: "rack-0", Labels: map[string]string{"rack": "0"}, Annotations: map[string]string{"note": "a: b\n---\nc", "nbsp": "a\u00a0b", "yes": "yes", "num": "0x10"},
			ResourceVersion: "12", CreationTimestamp: "2025-01-02T03:04:05Z", UID: "u-1"},
			Spec: IPPoolSpec{CIDR: "10.0.0.0/16", BlockSize: 24, IPIPMode: EncapCrossSubnet, VXLANMode: EncapNever, NATOutgoing: true,
				Disabled: true, NodeSelector: `rack == "0"`, NamespaceSelector: "team in (a,b)", AssignmentMode: AssignmentManual,
				AllowedUses: []IPUse{UseWorkload, UseTunnel}, DisableBGPExport: true}},
		&IPPool{ObjectMeta: ObjectMeta{Name: "v6"}, Spec: IPPoolSpec{CIDR: "fd00::/48", BlockSize: 122, IPIPMode: EncapNever,
			VXLANMode: EncapAlways, NodeSelector: "all()", AssignmentMode: AssignmentAutomatic, AllowedUses: []IPUse{UseWorkload}}},
		&IPReservation{ObjectMeta: ObjectMeta{Name: "r"}, Spec: IPReservationSpec{ReservedCIDRs: []string{"10.0.0.0/28", "10.0.1.5", "fd00::5-fd00::9"}}},
		&BGPConfiguration{ObjectMeta: ObjectMeta{Name: "default"}, Spec: BGPConfigurationSpec{ASNumber: NewASNumber(65546),
			NodeToNodeMeshEnabled: &f, ListenPort: 1179, RouteReflectorClusterID: "244.0.0.1", LogSeverity: "Debug",
			GracefulRestartSeconds: 300, MeshPassword: &SecretSource{SecretKeyRef: &SecretKeySelector{Name: "s", Key: "k"}}}},
		&BGPPeer{ObjectMeta: ObjectMeta{Name: "tor"}, Spec: BGPPeerSpec{Node: "n1", PeerIP: "[fd00::1]:1179", ASNumber: NewASNumber(64513),
			Password: &SecretSource{File: "/etc/rhizome/tor"}, KeepaliveSeconds: 10, HoldSeconds: 30, GracefulRestartSeconds: 60,
			Passive: true, NextHopMode: NextHopSelf, SourceAddress: SourceAddressNone}},
		&Node{ObjectMeta: ObjectMeta{Name: "n1", Labels: map[string]string{"rhizome.io/route-reflector": "true"}},
			Spec: NodeSpec{BGP: &NodeBGPSpec{IPv4Address: "10.0.0.5/24", IPv6Address: "fd00::5/64", ASNumber: NewASNumber(64514),
				RouteReflectorClusterID: "244.0.0.1", IPv4TunnelAddr: "10.244.0.1"}},
			Status: &NodeStatus{AgentVersion: "v0.1.0", LastHeartbeat: "2025-01-02T03:04:05Z", BGPPeersUp: 2, BGPPeers: 3,
				Blocks: []string{"10.244.0.0/26"}, IPsInUse: 5, IPsFree: 59,
				Conditions: []NodeCondition{{Type: "IPIPReady", Status: "False", Reason: "NoKernelModule", Message: "load ipip"}}}},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, obj := range fullObjects() {
		SetDefaults(obj)
		if err := Validate(obj); err != nil {
			t.Fatal(err)
		}
		t.Run(kindOf(obj)+"/"+obj.GetObjectMeta().Name, func(t *testing.T) {
			y, err := MarshalYAML(obj)
			if err != nil {
				t.Fatal(err)
			}
			if got := decodeOne(t, string(y)); !reflect.DeepEqual(got, obj) {
				t.Errorf("YAML round trip:\n%s\ngot  %s\nwant %s", y, mustJSON(t, got), mustJSON(t, obj))
			}
			j, err := MarshalJSON(obj)
			if err != nil {
				t.Fatal(err)
			}
			if got := decodeOne(t, string(j)); !reflect.DeepEqual(got, obj) {
				t.Errorf("JSON round trip:\ngot  %s\nwant %s", mustJSON(t, got), j)
			}
			fresh, _ := New(kindOf(obj))
			if err := DecodeInto(j, fresh); err != nil || !reflect.DeepEqual(fresh, obj) {
				t.Errorf("DecodeInto: %v\ngot  %s\nwant %s", err, mustJSON(t, fresh), j)
			}
		})
	}
}

func TestMarshal(t *testing.T) {
	p := &IPPool{ObjectMeta: ObjectMeta{Name: "a"}, Spec: IPPoolSpec{CIDR: "10.0.0.0/16"}}
	j, err := MarshalJSON(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"apiVersion":"rhizome.io/v1","kind":"IPPool","metadata":{"name":"a"},"spec":{"cidr":"10.0.0.0/16"}}`; string(j) != want {
		t.Errorf("got %s, want %s", j, want)
	}
	if p.APIVersion != "" || p.Kind != "" {
		t.Errorf("MarshalJSON modified its argument: %+v", p.TypeMeta)
	}
	y, err := MarshalYAML(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := "apiVersion: rhizome.io/v1\nkind: IPPool\nmetadata:\n  name: a\nspec:\n  cidr: 10.0.0.0/16\n"; string(y) != want {
		t.Errorf("got %q, want %q", y, want)
	}
	for _, obj := range []Object{nil, (*IPPool)(nil)} {
		if _, err := MarshalJSON(obj); err == nil {
			t.Errorf("MarshalJSON(%#v): no error", obj)
		}
		if _, err := MarshalYAML(obj); err == nil {
			t.Errorf("MarshalYAML(%#v): no error", obj)
		}
	}
}

// Whatever string a valid object holds (annotations are free text) comes
// back unchanged through MarshalYAML and Decode.
func TestYAMLRoundTripOddStrings(t *testing.T) {
	for _, v := range []string{
		"\t", "\u0085", "a\u0085b", "\u2028", "\u2029", "\x7f", "\u0080", "\u009f", "\ufeff", "\ufeffx", "\ufffe", "\uffff",
		"\U0001F600", "é", "\x00", "\x01", "\r", "a\r\nb", " lead", "trail ", "",
		"-", "---", "--- x", "...", "... x", "#", "&a", "*a", "!tag", "%", "@", "`", "{", "[", "'", "\"", ":", "a: b", "? x",
		"|", ">", "<<", "=", "\\", "null", "~", "y", "n", "yes", "off", "0o17", "1e3", ".inf", ".nan", "0x1F", "1_000", "+1",
		"01", "2001-01-01", "2001-01-01T00:00:00Z",
		"a\u00a0b", "\u00a0", "\u00a0a:\u00a0b", "a\n\u00a0b", "\n\u00a0", "\u00a0\n",
	} {
		n := &Node{ObjectMeta: ObjectMeta{Name: "n1", Annotations: map[string]string{"k": v, v + "k": "x"}}}
		want, _ := MarshalJSON(n)
		y, err := MarshalYAML(n)
		if err != nil {
			t.Errorf("%q: MarshalYAML: %v", v, err)
			continue
		}
		back, err := Decode(y)
		if err != nil {
			t.Errorf("%q: Decode: %v\n%s", v, err, y)
			continue
		}
		if got, _ := MarshalJSON(back[0]); string(got) != string(want) {
			t.Errorf("%q: changed:\n%s\n%s", v, want, got)
		}
	}
}

// TestDecodeNodeVXLAN reads a node record with the VXLAN fields the agent
// writes, under Calico's names, and writes it back unchanged.
func TestDecodeNodeVXLAN(t *testing.T) {
	const doc = "apiVersion: rhizome.io/v1\nkind: Node\nmetadata: {name: node-1}\nspec:\n" +
		"  ipv4VXLANTunnelAddr: 192.168.0.1\n  vxlanTunnelMACAddr: 66:0b:5e:22:91:c3\n" +
		"  ipv6VXLANTunnelAddr: fd00:10:244::1\n  vxlanTunnelMACAddrV6: 66:0b:5e:22:91:c4\n"
	n := decodeOne(t, doc).(*Node)
	want := NodeSpec{IPv4VXLANTunnelAddr: "192.168.0.1", VXLANTunnelMACAddr: "66:0b:5e:22:91:c3",
		IPv6VXLANTunnelAddr: "fd00:10:244::1", VXLANTunnelMACAddrV6: "66:0b:5e:22:91:c4"}
	if n.Spec != want {
		t.Fatalf("spec = %+v, want %+v", n.Spec, want)
	}
	if err := Validate(n); err != nil {
		t.Fatal(err)
	}
	out, err := MarshalJSON(n)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{`"ipv4VXLANTunnelAddr":"192.168.0.1"`, `"vxlanTunnelMACAddr":"66:0b:5e:22:91:c3"`,
		`"ipv6VXLANTunnelAddr":"fd00:10:244::1"`, `"vxlanTunnelMACAddrV6":"66:0b:5e:22:91:c4"`} {
		if !strings.Contains(string(out), f) {
			t.Errorf("marshalled node %s lacks %s", out, f)
		}
	}
}
