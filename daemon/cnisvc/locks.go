package cnisvc

import (
	"sync"
)

// keyedLocks serialises requests for the same handle (a runtime retrying
// an ADD while the first is still in flight) and lets GC skip handles that
// are being worked on.
type keyedLocks struct {
	mu   sync.Mutex
	held map[string]*keyedLock
}

type keyedLock struct {
	mu   sync.Mutex
	refs int
}

// lock takes the lock of key and returns its release.
func (k *keyedLocks) lock(key string) func() {
	k.mu.Lock()
	l := k.held[key]
	if l == nil {
		l = &keyedLock{}
		k.held[key] = l
	}
	l.refs++
	k.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		k.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(k.held, key)
		}
		k.mu.Unlock()
	}
}

// busy reports whether a request holds or waits for key.
func (k *keyedLocks) busy(key string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.held[key] != nil
}
