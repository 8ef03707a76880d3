package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Backend answers the plugins' requests; the agent implements it.
type Backend interface {
	Add(ctx context.Context, req *AddRequest) (*AddResponse, error)
	Del(ctx context.Context, req *DelRequest) error
	Check(ctx context.Context, req *CheckRequest) error
	GC(ctx context.Context, req *GCRequest) (*GCResponse, error)
	Status(ctx context.Context) (*StatusResponse, error)
}

type serverOptions struct {
	log       *slog.Logger
	listening func()
}

// ServerOption configures Serve.
type ServerOption func(*serverOptions)

// WithServerLogger sets the logger (default slog.Default()).
func WithServerLogger(l *slog.Logger) ServerOption {
	return func(o *serverOptions) { o.log = l }
}

// OnListening is called once the socket accepts connections (for the
// agent's readiness).
func OnListening(f func()) ServerOption {
	return func(o *serverOptions) { o.listening = f }
}

// Serve listens on the unix socket at path (see Listen) and answers
// requests with b until ctx ends; then it removes the socket.
func Serve(ctx context.Context, path string, b Backend, opts ...ServerOption) error {
	l, err := Listen(path)
	if err != nil {
		return err
	}
	return ServeListener(ctx, l, b, opts...)
}

// Listen creates the unix socket at path with mode 0600: the directory is
// created (0700) if missing and a stale socket left by a dead agent is
// removed. It fails when another process still serves at path.
//
// The socket is bound in a private directory and renamed into place, so it
// is never reachable with a wider mode than 0600.
func Listen(path string) (*Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create CNI socket directory %s: %w", dir, err)
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(dir, ".cni-sock-")
	if err != nil {
		return nil, fmt.Errorf("create CNI socket in %s: %w", dir, err)
	}
	defer os.RemoveAll(tmp)
	tmpSock := filepath.Join(tmp, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmpSock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on CNI socket %s: %w", path, err)
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmpSock, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("set mode of CNI socket %s: %w", path, err)
	}
	if err := os.Rename(tmpSock, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("move CNI socket into place at %s: %w", path, err)
	}
	return &Listener{l: l, path: path}, nil
}

// Listener is a CNI socket made by Listen.
type Listener struct {
	l    *net.UnixListener
	path string
}

// Path is where the socket lives.
func (l *Listener) Path() string { return l.path }

// Close stops accepting and removes the socket file.
func (l *Listener) Close() error {
	err := l.l.Close()
	if rmErr := os.Remove(l.path); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) && err == nil {
		err = rmErr
	}
	return err
}

// removeStale removes a socket at path that nobody serves.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspect CNI socket path %s: %w", path, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("CNI socket path %s exists and is not a socket: remove it or choose another path", path)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return fmt.Errorf("another process serves the CNI socket %s: is a second rhizome-node running on this node?", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale CNI socket %s: %w", path, err)
	}
	return nil
}

// ServeListener answers requests on l with b until ctx ends, then closes l
// and removes its socket file.
func ServeListener(ctx context.Context, l *Listener, b Backend, opts ...ServerOption) error {
	o := serverOptions{log: slog.Default()}
	for _, f := range opts {
		f(&o)
	}
	h := &handler{b: b, log: o.log}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/add", h.add)
	mux.HandleFunc("POST /v1/del", h.del)
	mux.HandleFunc("POST /v1/check", h.check)
	mux.HandleFunc("POST /v1/gc", h.gc)
	mux.HandleFunc("GET /v1/status", h.status)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if o.listening != nil {
		o.listening()
	}
	o.log.Info("serving CNI requests", "socket", l.path)
	err := srv.Serve(l.l)
	<-done
	if rmErr := os.Remove(l.path); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
		o.log.Warn("remove CNI socket", "socket", l.path, "err", rmErr)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("serve CNI socket %s: %w", l.path, err)
}

type handler struct {
	b   Backend
	log *slog.Logger
}

func (h *handler) add(w http.ResponseWriter, r *http.Request) {
	var req AddRequest
	if !decode(w, r, &req) {
		return
	}
	resp, err := h.b.Add(r.Context(), &req)
	h.reply(w, "add", req.ContainerID, resp, err)
}

func (h *handler) del(w http.ResponseWriter, r *http.Request) {
	var req DelRequest
	if !decode(w, r, &req) {
		return
	}
	h.reply(w, "del", req.ContainerID, struct{}{}, h.b.Del(r.Context(), &req))
}

func (h *handler) check(w http.ResponseWriter, r *http.Request) {
	var req CheckRequest
	if !decode(w, r, &req) {
		return
	}
	h.reply(w, "check", req.ContainerID, struct{}{}, h.b.Check(r.Context(), &req))
}

func (h *handler) gc(w http.ResponseWriter, r *http.Request) {
	var req GCRequest
	if !decode(w, r, &req) {
		return
	}
	resp, err := h.b.GC(r.Context(), &req)
	h.reply(w, "gc", "", resp, err)
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	resp, err := h.b.Status(r.Context())
	h.reply(w, "status", "", resp, err)
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 4<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, &Error{Code: CodeDecoding,
			Msg: fmt.Sprintf("rhizome-node cannot decode the %s request: %v (are the plugin and agent versions the same?)", r.URL.Path, err)})
		return false
	}
	return true
}

func (h *handler) reply(w http.ResponseWriter, op, container string, resp any, err error) {
	if err == nil {
		writeJSON(w, http.StatusOK, resp)
		return
	}
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Code: CodeInternal, Msg: err.Error()}
	}
	h.log.Warn("CNI request failed", "op", op, "container", container, "code", e.Code, "err", e.Error())
	status := http.StatusInternalServerError
	if e.Code != CodeInternal {
		status = http.StatusUnprocessableEntity
	}
	writeJSON(w, status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
