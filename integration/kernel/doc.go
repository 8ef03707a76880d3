// Package kernel holds tests of kernel features the CI machine's kernel
// lacks (IPIP). Their names start with TestKernel; `make test-kernel` runs
// them inside a qemu-booted Debian kernel (package integration/vm), and on
// a host without the feature they skip, saying so.
package kernel
