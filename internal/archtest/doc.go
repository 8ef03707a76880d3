// Package archtest holds tests of the repository's structure: which
// packages may import the etcd client and which may know IPAM's storage
// format. It has no code of its own.
package archtest
