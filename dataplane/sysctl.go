package dataplane

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// nodeSysctls are the settings a node needs: it forwards pod traffic.
var nodeSysctls = map[string]string{
	"net/ipv4/ip_forward":          "1",
	"net/ipv6/conf/all/forwarding": "1",
}

// EnsureNodeSysctls sets the node's forwarding sysctls in ns (netns.None()
// for the caller's namespace) and reads them back. IPv6 forwarding is
// skipped where the kernel has no IPv6.
func EnsureNodeSysctls(ns netns.NsHandle) error {
	for key, val := range nodeSysctls {
		err := WriteSysctl(ns, key, val)
		if err != nil && strings.HasPrefix(key, "net/ipv6/") && os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// WriteSysctl writes val to /proc/sys/<key> as seen from namespace ns and
// verifies it by reading it back. /proc/sys/net shows the namespace of the
// thread that opens the file, so the open happens on a locked thread
// switched into ns.
func WriteSysctl(ns netns.NsHandle, key, val string) error {
	path := filepath.Join("/proc/sys", key)
	err := inNS(ns, func() error {
		if err := os.WriteFile(path, []byte(val), 0o644); err != nil {
			return err
		}
		got, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if g := string(bytes.TrimSpace(got)); g != val {
			return fmt.Errorf("reads back %q", g)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", key, val, err)
	}
	return nil
}

// ReadSysctl reads /proc/sys/<key> as seen from namespace ns.
func ReadSysctl(ns netns.NsHandle, key string) (string, error) {
	var out string
	err := inNS(ns, func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", key))
		out = string(bytes.TrimSpace(b))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", key, err)
	}
	return out, nil
}

// inNS runs f on a locked OS thread switched into ns, and switches back.
// If switching back fails the thread stays locked, so the Go runtime
// retires it instead of reusing a thread in the wrong namespace.
func inNS(ns netns.NsHandle, f func() error) error {
	if !ns.IsOpen() {
		return f()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", ns, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("return to network namespace %s: %w", orig, err)
	}
	runtime.UnlockOSThread()
	return ferr
}
