package datastore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// wrap names the operation and key of a failed request. Deadlines, gRPC Unavailable and etcd's own
// "no leader" or "request timed out" errors become ErrUnavailable, with the endpoints and the time waited.
func (e *Etcd) wrap(verb, key string, start time.Time, err error) error {
	if !isUnavailable(err) {
		return fmt.Errorf("%s %s: %w", verb, key, err)
	}
	var detail string
	if last := e.connErr.since(start); last != "" {
		detail = " (last error: " + last + ")"
	} else if !errors.Is(err, context.DeadlineExceeded) {
		detail = " (" + err.Error() + ")"
	}
	if e.certRequested.Load() {
		detail += "; etcd asks for a client certificate and none is configured (set the certificate and key files)"
	}
	if verb != "get" && verb != "list" {
		detail += ", so the write may or may not have been applied"
	}
	return &unavailableError{
		msg: fmt.Sprintf("%s %s: etcd not reachable at %s after %s%s: %s",
			verb, key, strings.Join(e.endpoints, ","), roundWait(time.Since(start)), detail, ErrUnavailable),
		cause: err,
	}
}

// unavailableError is ErrUnavailable and, for errors.Is, also its cause (often context.DeadlineExceeded).
type unavailableError struct {
	msg   string
	cause error
}

func (e *unavailableError) Error() string   { return e.msg }
func (e *unavailableError) Unwrap() []error { return []error{ErrUnavailable, e.cause} }

func isUnavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var etcdErr rpctypes.EtcdError
	if errors.As(err, &etcdErr) {
		return unavailableCode(etcdErr.Code())
	}
	if s, ok := status.FromError(err); ok {
		return unavailableCode(s.Code())
	}
	return false
}

func unavailableCode(c codes.Code) bool {
	return c == codes.Unavailable || c == codes.DeadlineExceeded
}

func roundWait(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

// lastError remembers the last connection-level error a request saw. The etcd client reports a request that
// timed out waiting for a connection as a bare context.DeadlineExceeded; gRPC's own error says why there was
// no connection (refused, TLS handshake failed), which is what an operator needs to read.
type lastError struct {
	p atomic.Pointer[timedError]
}

type timedError struct {
	at  time.Time
	msg string
}

// intercept is a gRPC unary client interceptor; it costs nothing on success.
func (l *lastError) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if err != nil {
		if s, ok := status.FromError(err); ok && unavailableCode(s.Code()) && s.Message() != context.DeadlineExceeded.Error() {
			l.p.Store(&timedError{at: time.Now(), msg: s.Message()})
		}
	}
	return err
}

// since returns the last error recorded after t, or "".
func (l *lastError) since(t time.Time) string {
	if te := l.p.Load(); te != nil && !te.at.Before(t) {
		return te.msg
	}
	return ""
}
