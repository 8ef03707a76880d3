package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Client talks to the agent. It is cheap: a plugin makes one per call.
type Client struct {
	socket  string
	timeout time.Duration
	http    *http.Client
}

// ClientOption configures a Client.
type ClientOption func(*Client)

// WithTimeout bounds each request, connection included (default 30 s; the
// first address of a node may need a block claim in etcd).
func WithTimeout(d time.Duration) ClientOption { return func(c *Client) { c.timeout = d } }

// dialTimeout bounds connecting to the socket: a local agent accepts at
// once or not at all.
const dialTimeout = time.Second

// NewClient returns a client for the agent serving at socket (DefaultSocket
// when empty).
func NewClient(socket string, opts ...ClientOption) *Client {
	if socket == "" {
		socket = DefaultSocket
	}
	c := &Client{socket: socket, timeout: 30 * time.Second}
	for _, o := range opts {
		o(c)
	}
	d := net.Dialer{Timeout: dialTimeout}
	c.http = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", c.socket)
		},
		DisableKeepAlives: true,
	}}
	return c
}

// Socket is the path the client connects to.
func (c *Client) Socket() string { return c.socket }

// Add asks for the addresses of an attachment.
func (c *Client) Add(ctx context.Context, req *AddRequest) (*AddResponse, error) {
	var resp AddResponse
	if err := c.call(ctx, http.MethodPost, "/v1/add", req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Del releases the addresses of an attachment.
func (c *Client) Del(ctx context.Context, req *DelRequest) error {
	return c.call(ctx, http.MethodPost, "/v1/del", req, nil)
}

// Check verifies that an attachment holds the given addresses.
func (c *Client) Check(ctx context.Context, req *CheckRequest) error {
	return c.call(ctx, http.MethodPost, "/v1/check", req, nil)
}

// GC releases the attachments of a network that are not in the valid list.
func (c *Client) GC(ctx context.Context, req *GCRequest) (*GCResponse, error) {
	var resp GCResponse
	if err := c.call(ctx, http.MethodPost, "/v1/gc", req, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Status asks whether the agent can allocate.
func (c *Client) Status(ctx context.Context) (*StatusResponse, error) {
	var resp StatusResponse
	if err := c.call(ctx, http.MethodGet, "/v1/status", nil, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// NotReachable is the error when nothing answers on the socket.
func NotReachable(socket string, cause error) *Error {
	e := &Error{
		Code:    CodeTryAgainLater,
		Msg:     fmt.Sprintf("rhizome-node is not reachable at %s: is the rhizome-node pod running on this node?", socket),
		wrapped: cause,
	}
	if cause != nil {
		e.Details = cause.Error()
	}
	return e
}

func (c *Client) call(ctx context.Context, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return &Error{Code: CodeInternal, Msg: fmt.Sprintf("encode %s request: %v", path, err)}
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://rhizome-node"+path, body)
	if err != nil {
		return &Error{Code: CodeInternal, Msg: fmt.Sprintf("build %s request: %v", path, err)}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return NotReachable(c.socket, op.Err)
		}
		if ctx.Err() != nil {
			return &Error{Code: CodeTryAgainLater, wrapped: err,
				Msg: fmt.Sprintf("rhizome-node at %s did not answer %s within %s: check the agent's log on this node", c.socket, path, c.timeout)}
		}
		return &Error{Code: CodeTryAgainLater, Msg: fmt.Sprintf("rhizome-node at %s: %s: %v", c.socket, path, err), wrapped: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return &Error{Code: CodeTryAgainLater, Msg: fmt.Sprintf("read rhizome-node's answer to %s: %v", path, err), wrapped: err}
	}
	if resp.StatusCode != http.StatusOK {
		var e Error
		if json.Unmarshal(data, &e) != nil || e.Msg == "" {
			return &Error{Code: CodeInternal, Msg: fmt.Sprintf("rhizome-node answered %s with %s: %.200s", path, resp.Status, data)}
		}
		return &e
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return &Error{Code: CodeDecoding, Msg: fmt.Sprintf("decode rhizome-node's answer to %s: %v", path, err)}
		}
	}
	return nil
}
