package bgplab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/bgp"
)

// childEnv marks a re-executed test binary as a speaker process.
const childEnv = "RHIZOME_BGPLAB_SPEAKER"

// request is one line the parent writes to a speaker process.
type request struct {
	ID      int                 `json:"id"`
	Op      string              `json:"op"` // start, peers, adverts, status, stop, shutdown
	Config  *bgp.Config         `json:"config,omitempty"`
	Peers   []bgp.Peer          `json:"peers,omitempty"`
	Adverts []bgp.Advertisement `json:"adverts,omitempty"`
}

// message is one line a speaker process writes: a reply or an event.
type message struct {
	ID     int              `json:"id,omitempty"`
	Reply  bool             `json:"reply,omitempty"`
	Err    string           `json:"err,omitempty"`
	Status []bgp.PeerStatus `json:"status,omitempty"`
	Route  *bgp.RouteEvent  `json:"route,omitempty"`
	Peer   *bgp.PeerEvent   `json:"peer,omitempty"`
	// At is when the event happened in the speaker (for latency figures).
	At time.Time `json:"at,omitzero"`
}

// Main runs the speaker process when the test binary was started by
// StartSpeaker, and returns otherwise. Call it first in TestMain.
func Main() {
	if os.Getenv(childEnv) == "" {
		return
	}
	if err := serve(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "speaker:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// serve runs the control protocol until stdin closes or a stop request.
func serve(in io.Reader, out io.Writer) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	events := make(chan message, 1024)
	var wmu sync.Mutex
	enc := json.NewEncoder(out)
	write := func(m message) {
		wmu.Lock()
		defer wmu.Unlock()
		_ = enc.Encode(m)
	}
	// The callbacks only queue; this goroutine writes.
	go func() {
		for m := range events {
			write(m)
		}
	}()
	var sp *bgp.Speaker
	ctx := context.Background()
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var r request
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("bad request %q: %w", sc.Text(), err)
		}
		reply := message{ID: r.ID, Reply: true}
		var err error
		switch {
		case r.Op == "start" && sp == nil && r.Config != nil:
			sp, err = bgp.Start(ctx, *r.Config, bgp.WithLogger(log),
				bgp.OnRoute(func(e bgp.RouteEvent) { events <- message{Route: &e, At: time.Now()} }),
				bgp.OnPeer(func(e bgp.PeerEvent) { events <- message{Peer: &e, At: time.Now()} }))
		case sp == nil:
			err = fmt.Errorf("%q before start", r.Op)
		case r.Op == "peers":
			err = sp.SetPeers(ctx, r.Peers)
		case r.Op == "adverts":
			err = sp.SetAdvertisements(ctx, r.Adverts)
		case r.Op == "status":
			reply.Status, err = sp.Status(ctx)
		case r.Op == "stop":
			err = sp.Stop(ctx)
		case r.Op == "shutdown":
			err = sp.Shutdown(ctx)
		default:
			err = fmt.Errorf("unknown request %q", r.Op)
		}
		if err != nil {
			reply.Err = err.Error()
		}
		write(reply)
		if r.Op == "stop" || r.Op == "shutdown" {
			return nil // the process exits: the kernel closes what is left
		}
	}
	return sc.Err()
}

// Speaker is a rhizome speaker running as its own process in a node's
// namespace, and what the test has seen it report.
type Speaker struct {
	Node *Node
	t    testing.TB
	cmd  *startedCmd
	in   io.WriteCloser

	mu      sync.Mutex
	cond    *sync.Cond
	nextID  int
	replies map[int]message
	routes  map[netip.Prefix]bgp.RouteEvent
	history []message // every route and peer event, in order
	peers   map[netip.Addr]string
	exited  bool
	stderr  bytes.Buffer
}

// StartSpeaker starts a speaker process in nd's namespace with cfg. A zero
// RouterID and ListenAddresses are filled in from the node.
func StartSpeaker(t testing.TB, nd *Node, cfg bgp.Config) *Speaker {
	t.Helper()
	if !cfg.RouterID.IsValid() {
		cfg.RouterID = nd.Addr.Addr()
	}
	if len(cfg.ListenAddresses) == 0 {
		cfg.ListenAddresses = []netip.Addr{nd.Addr.Addr(), nd.Addr6.Addr()}
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	s := &Speaker{Node: nd, t: t, replies: map[int]message{}, routes: map[netip.Prefix]bgp.RouteEvent{}, peers: map[netip.Addr]string{}}
	s.cond = sync.NewCond(&s.mu)
	cmd := nd.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	s.in, err = cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = &lockedWriter{mu: &s.mu, w: &s.stderr}
	s.cmd = start(t, cmd, "speaker "+nd.Name)
	go s.read(stdout)
	t.Cleanup(func() {
		if t.Failed() {
			s.mu.Lock()
			t.Logf("speaker %s log:\n%s", nd.Name, s.stderr.String())
			s.mu.Unlock()
		}
	})
	s.call(request{Op: "start", Config: &cfg})
	return s
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (s *Speaker) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var m message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			continue
		}
		s.mu.Lock()
		switch {
		case m.Reply:
			s.replies[m.ID] = m
		case m.Route != nil:
			s.history = append(s.history, m)
			if m.Route.Withdrawn {
				delete(s.routes, m.Route.Prefix)
			} else {
				s.routes[m.Route.Prefix] = *m.Route
			}
		case m.Peer != nil:
			s.history = append(s.history, m)
			s.peers[m.Peer.Address] = m.Peer.State
		}
		s.cond.Broadcast()
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.exited = true
	s.cond.Broadcast()
	s.mu.Unlock()
}

// call sends a request and waits for its reply; an error reply fails t.
func (s *Speaker) call(r request) message {
	s.t.Helper()
	m, err := s.try(r)
	if err != nil {
		s.t.Fatalf("speaker %s: %s: %v", s.Node.Name, r.Op, err)
	}
	return m
}

func (s *Speaker) try(r request) (message, error) {
	s.mu.Lock()
	s.nextID++
	r.ID = s.nextID
	s.mu.Unlock()
	line, _ := json.Marshal(r)
	if _, err := s.in.Write(append(line, '\n')); err != nil {
		return message{}, fmt.Errorf("write request: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m, ok := s.replies[r.ID]; ok {
			delete(s.replies, r.ID)
			if m.Err != "" {
				return m, errors.New(m.Err)
			}
			return m, nil
		}
		if s.exited {
			return message{}, fmt.Errorf("the speaker process exited; its log:\n%s", s.stderr.String())
		}
		if time.Now().After(deadline) {
			return message{}, errors.New("no reply in 30 s")
		}
		s.waitLocked(time.Second)
	}
}

// waitLocked waits for news or d, whichever comes first; s.mu is held.
func (s *Speaker) waitLocked(d time.Duration) {
	t := time.AfterFunc(d, func() { s.mu.Lock(); s.cond.Broadcast(); s.mu.Unlock() })
	s.cond.Wait()
	t.Stop()
}

// SetPeers sets the speaker's peers; the test fails on error.
func (s *Speaker) SetPeers(peers ...bgp.Peer) {
	s.t.Helper()
	s.call(request{Op: "peers", Peers: peers})
}

// TrySetPeers sets the speaker's peers and returns the speaker's error.
func (s *Speaker) TrySetPeers(peers ...bgp.Peer) error {
	_, err := s.try(request{Op: "peers", Peers: peers})
	return err
}

// SetAdvertisements sets what the speaker originates.
func (s *Speaker) SetAdvertisements(advs ...bgp.Advertisement) {
	s.t.Helper()
	s.call(request{Op: "adverts", Adverts: advs})
}

// Status returns the speaker's peer table.
func (s *Speaker) Status() []bgp.PeerStatus {
	s.t.Helper()
	return s.call(request{Op: "status"}).Status
}

// Stop asks the speaker to stop as an agent restart does (no Cease with
// graceful restart); the process exits.
func (s *Speaker) Stop() { s.t.Helper(); s.call(request{Op: "stop"}); s.cmd.wait() }

// Shutdown closes every session with a Cease; the process exits.
func (s *Speaker) Shutdown() { s.t.Helper(); s.call(request{Op: "shutdown"}); s.cmd.wait() }

// PID is the speaker process's ID.
func (s *Speaker) PID() int { return s.cmd.cmd.Process.Pid }

// Kill kills the speaker process with SIGKILL: no Cease, the kernel
// closes its connections.
func (s *Speaker) Kill() { s.t.Helper(); s.cmd.kill() }

// View is what a speaker has reported so far.
type View struct {
	// Routes are the learned best paths now.
	Routes map[netip.Prefix]bgp.RouteEvent
	// Peers are the last reported session states.
	Peers map[netip.Addr]string
	// History is every route and peer event in order.
	History []message
}

// Established counts sessions in state Established.
func (v View) Established() int {
	n := 0
	for _, st := range v.Peers {
		if st == bgp.StateEstablished {
			n++
		}
	}
	return n
}

// RouteEvents returns the route events in History.
func (v View) RouteEvents() []bgp.RouteEvent {
	var out []bgp.RouteEvent
	for _, m := range v.History {
		if m.Route != nil {
			out = append(out, *m.Route)
		}
	}
	return out
}

// RouteTimes returns when each route event happened in the speaker.
func (v View) RouteTimes() []time.Time {
	var out []time.Time
	for _, m := range v.History {
		if m.Route != nil {
			out = append(out, m.At)
		}
	}
	return out
}

// Wait waits up to timeout for cond to hold on the speaker's view, and
// fails the test with what describes the view otherwise.
func (s *Speaker) Wait(timeout time.Duration, what string, cond func(View) bool) {
	s.t.Helper()
	if err := s.WaitErr(timeout, cond); err != nil {
		v := s.View()
		s.t.Fatalf("speaker %s: %s: %v; routes %v, peers %v", s.Node.Name, what, err, v.Routes, v.Peers)
	}
}

// WaitErr is Wait returning an error instead of failing.
func (s *Speaker) WaitErr(timeout time.Duration, cond func(View) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		// cond runs without the lock: it may call Status.
		s.mu.Lock()
		v, exited := s.viewLocked(), s.exited
		s.mu.Unlock()
		if cond(v) {
			return nil
		}
		if exited {
			return errors.New("the speaker process exited")
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("not within %v", timeout)
		}
		s.mu.Lock()
		s.waitLocked(min(left, 200*time.Millisecond))
		s.mu.Unlock()
	}
}

// View returns a copy of what the speaker reported so far.
func (s *Speaker) View() View {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.viewLocked()
}

func (s *Speaker) viewLocked() View {
	v := View{Routes: make(map[netip.Prefix]bgp.RouteEvent, len(s.routes)), Peers: make(map[netip.Addr]string, len(s.peers)),
		History: append([]message(nil), s.history...)}
	for k, r := range s.routes {
		v.Routes[k] = r
	}
	for k, p := range s.peers {
		v.Peers[k] = p
	}
	return v
}
