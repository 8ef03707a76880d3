package bgp

import (
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"

	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
)

// lastErrors keeps the last error GoBGP reported per peer, for Status.
type lastErrors struct {
	mu sync.Mutex
	m  map[string]string
}

func (e *lastErrors) set(peer, msg string) {
	e.mu.Lock()
	e.m[peer] = msg
	e.mu.Unlock()
}

func (e *lastErrors) get(peer string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.m[peer]
}

func (e *lastErrors) clear(peer string) {
	e.mu.Lock()
	delete(e.m, peer)
	e.mu.Unlock()
}

// gobgpLogger passes GoBGP's log into slog and records per-peer errors.
// It claims the debug level so that GoBGP reports failed connection
// attempts (only logged at debug); other debug messages are dropped.
type gobgpLogger struct {
	log  *slog.Logger
	errs *lastErrors
}

// peerErrors are the GoBGP messages that explain why a session is down.
var peerErrors = map[string]bool{
	"failed to connect":               true,
	"received notification":           true,
	"sent notification":               true,
	"hold timer expired":              true,
	"Peer Down":                       true,
	"failed to resolve local address": true,
	"failed to set md5":               true,
}

func (l *gobgpLogger) record(msg string, fields gobgplog.Fields) {
	if !peerErrors[msg] {
		return
	}
	peer, _ := fields["Key"].(string)
	if peer == "" {
		return
	}
	var b strings.Builder
	b.WriteString(msg)
	keys := make([]string, 0, len(fields))
	for k := range fields {
		if k != "Key" && k != "Topic" && k != "State" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, ", %s: %v", strings.ToLower(k), fields[k])
	}
	l.errs.set(peer, b.String())
}

func attrs(fields gobgplog.Fields) []any {
	out := make([]any, 0, 2*len(fields))
	for k, v := range fields {
		if k == "Key" {
			k = "peer"
		}
		out = append(out, strings.ToLower(k), v)
	}
	return out
}

func (l *gobgpLogger) Panic(msg string, fields gobgplog.Fields) {
	l.log.Error("gobgp: "+msg, attrs(fields)...)
	panic("gobgp: " + msg)
}

func (l *gobgpLogger) Fatal(msg string, fields gobgplog.Fields) {
	l.log.Error("gobgp: "+msg, attrs(fields)...)
	panic("gobgp: " + msg)
}

func (l *gobgpLogger) Error(msg string, fields gobgplog.Fields) {
	l.record(msg, fields)
	l.log.Error("gobgp: "+msg, attrs(fields)...)
}

func (l *gobgpLogger) Warn(msg string, fields gobgplog.Fields) {
	l.record(msg, fields)
	l.log.Warn("gobgp: "+msg, attrs(fields)...)
}

func (l *gobgpLogger) Info(msg string, fields gobgplog.Fields) {
	l.record(msg, fields)
	l.log.Debug("gobgp: "+msg, attrs(fields)...)
}

func (l *gobgpLogger) Debug(msg string, fields gobgplog.Fields) {
	l.record(msg, fields)
}

func (l *gobgpLogger) SetLevel(gobgplog.LogLevel) {}

func (l *gobgpLogger) GetLevel() gobgplog.LogLevel { return gobgplog.DebugLevel }
