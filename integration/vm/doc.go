// Package vm runs a test binary under a Debian kernel booted by qemu, for
// the tests that need kernel features the CI machine lacks (IPIP).
//
// FetchKernel unpacks a Debian kernel package into the cache (it is never
// installed on the host), BuildBase writes the cached base initramfs
// (static busybox, the modules, /init), and Guest.Run lays a small archive
// with the test binary over it, boots, and returns the exit status the
// guest printed. cmd vmexec wraps this as a `go test -exec` program.
package vm
