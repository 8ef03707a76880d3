//go:build race

package ipam

// raceEnabled: the race detector slows the chaos runs about tenfold, so
// under it they run an eighth of the operations (enough to find data
// races); `make test` runs them in full without it as well.
const raceEnabled = true
