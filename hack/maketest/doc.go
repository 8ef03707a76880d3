// Package maketest has no code: its tests run the repository's Makefile the way a user does (make
// help, make build's version stamp, the tools cache it shares with the Go code in
// internal/toolcache), so the interface every contributor uses cannot drift from what it says.
package maketest
