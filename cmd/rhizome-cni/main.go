// Command rhizome-cni is rhizome's CNI plugin: a veth pair per pod, with
// addresses from the rhizome-node agent. See package cni.
package main

import (
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/rhizome-net/rhizome/cni"
)

func init() {
	// Namespace switches apply to the OS thread: keep main on one.
	runtime.LockOSThread()
}

func main() {
	skel.PluginMainFuncs(cni.Plugin{}.Funcs(), version.All, "rhizome-cni: pod networking with addresses from rhizome-node")
}
