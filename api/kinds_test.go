package api

import (
	"reflect"
	"strings"
	"testing"
)

func TestKinds(t *testing.T) {
	var got []string
	for _, k := range Kinds() {
		got = append(got, k.Kind)
		obj := k.New()
		if tm := obj.GetTypeMeta(); tm.Kind != k.Kind || tm.APIVersion != GroupVersion {
			t.Errorf("%s: New() has TypeMeta %+v", k.Kind, tm)
		}
		if kindOf(obj) != k.Kind {
			t.Errorf("%s: New() returns %T", k.Kind, obj)
		}
		if k.Plural != strings.ToLower(k.Plural) || k.Plural != k.Aliases[1] {
			t.Errorf("%s: plural %q, aliases %q", k.Kind, k.Plural, k.Aliases)
		}
	}
	want := []string{"IPPool", "IPReservation", "BGPConfiguration", "BGPPeer", "Node"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Kinds() = %v, want %v", got, want)
	}
	// Callers may modify the result without affecting the next call.
	ks := Kinds()
	ks[0].Aliases[0] = "changed"
	if Kinds()[0].Aliases[0] != "ippool" {
		t.Error("Kinds() shares memory between calls")
	}
}

func TestLookupKind(t *testing.T) {
	cases := map[string]string{
		"IPPool": "IPPool", "ippool": "IPPool", "ippools": "IPPool", "pool": "IPPool", "pools": "IPPool", "IPPOOLS": "IPPool",
		"ipreservation": "IPReservation", "ipreservations": "IPReservation", "ipres": "IPReservation", "IPReservation": "IPReservation",
		"bgpconfiguration": "BGPConfiguration", "bgpconfigurations": "BGPConfiguration", "bgpconfig": "BGPConfiguration",
		"bgpconfigs": "BGPConfiguration", "BGPConfiguration": "BGPConfiguration",
		"bgppeer": "BGPPeer", "bgppeers": "BGPPeer", "BGPPeer": "BGPPeer",
		"node": "Node", "nodes": "Node", "Node": "Node",
	}
	for name, want := range cases {
		k, err := LookupKind(name)
		if err != nil || k.Kind != want {
			t.Errorf("LookupKind(%q) = %q, %v; want %s", name, k.Kind, err, want)
		}
	}
	for _, name := range []string{"", "ip", "peer", "bgpconfigurationss", "felixconfiguration"} {
		_, err := LookupKind(name)
		if err == nil {
			t.Errorf("LookupKind(%q): no error", name)
			continue
		}
		for _, w := range []string{"unknown resource kind", "ippool (ippools, pool, pools)", "ipreservation", "bgpconfiguration", "bgppeer", "node (nodes)"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("LookupKind(%q) error %q lacks %q", name, err, w)
			}
		}
	}
}

func TestNew(t *testing.T) {
	for _, k := range Kinds() {
		obj, err := New(k.Kind)
		if err != nil || kindOf(obj) != k.Kind {
			t.Errorf("New(%q) = %T, %v", k.Kind, obj, err)
		}
	}
	for _, k := range []string{"ippool", "Pool", "", "List"} {
		if _, err := New(k); err == nil || !strings.Contains(err.Error(), "IPPool, IPReservation, BGPConfiguration, BGPPeer, Node") {
			t.Errorf("New(%q): %v", k, err)
		}
	}
}
