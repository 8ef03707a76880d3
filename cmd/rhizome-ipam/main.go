// Command rhizome-ipam is rhizome's IPAM plugin for other main plugins
// (bridge, macvlan, ipvlan, Multus networks): addresses from the
// rhizome-node agent. See package cni.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/rhizome-net/rhizome/cni"
)

func main() {
	skel.PluginMainFuncs(cni.IPAMPlugin{}.Funcs(), version.All, "rhizome-ipam: addresses from rhizome-node")
}
