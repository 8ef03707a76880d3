package datastore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Defaults for Config.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 5 * time.Second
)

// Config says how to reach etcd.
type Config struct {
	// Endpoints are etcd client URLs (https:// when TLS is used); several are load-balanced.
	Endpoints []string
	// CertFile and KeyFile are a TLS client certificate; CAFile verifies the server. All are optional: a CA
	// alone gives server-authenticated TLS.
	CertFile, KeyFile, CAFile string
	// DialTimeout bounds connection set-up (default 5s).
	DialTimeout time.Duration
	// RequestTimeout is the deadline of each request whose context has none (default 5s).
	RequestTimeout time.Duration
}

// Etcd is the Store over an etcd v3 cluster.
type Etcd struct {
	cli            *clientv3.Client
	endpoints      []string
	requestTimeout time.Duration
	ownsClient     bool
	connErr        lastError
	certRequested  atomic.Bool // the server asked for a client certificate and there is none

	// done ends every watch when the store is closed.
	done     context.Context
	closeAll context.CancelFunc
}

var _ Store = (*Etcd)(nil)

// New connects to etcd. It does not wait for a connection: the first request that cannot reach etcd within
// the request timeout fails with ErrUnavailable.
func New(cfg Config) (*Etcd, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("connect to etcd: no endpoints configured (for example http://127.0.0.1:2379)")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	e := newEtcd(cfg.Endpoints, cfg.RequestTimeout)
	ccfg := clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		// Notice connections that died silently (no RST), so watches move on. The server refuses pings more
		// often than every 5s.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		// Failures reach the caller as errors; the client's own retry chatter would only go to stderr.
		Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{
			// Reconnect within about a second of etcd coming back (gRPC's default backoff grows to 2 minutes).
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
				MinConnectTimeout: cfg.DialTimeout,
			}),
			grpc.WithChainUnaryInterceptor(e.connErr.intercept),
		},
	}
	if cfg.CertFile != "" || cfg.KeyFile != "" || cfg.CAFile != "" {
		if (cfg.CertFile == "") != (cfg.KeyFile == "") {
			return nil, fmt.Errorf("etcd TLS: a client certificate needs both a certificate file and a key file (got cert %q, key %q)",
				cfg.CertFile, cfg.KeyFile)
		}
		tlsInfo := transport.TLSInfo{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, TrustedCAFile: cfg.CAFile}
		tlsCfg, err := tlsInfo.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd TLS (cert %q, key %q, CA %q): %w", cfg.CertFile, cfg.KeyFile, cfg.CAFile, err)
		}
		if cfg.CertFile == "" {
			// Without a client certificate, a server that requires one accepts the TLS 1.3 handshake and
			// then drops the connection ("broken pipe"). Remember that it asked, to say so in errors.
			tlsCfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				e.certRequested.Store(true)
				return &tls.Certificate{}, nil
			}
		}
		ccfg.TLS = tlsCfg
	}
	cli, err := clientv3.New(ccfg)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd at %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	e.cli = cli
	e.ownsClient = true
	return e, nil
}

// NewFromClient wraps a client the caller made and keeps owning: Close ends the store's watches but leaves the
// client open. endpoints are named in errors.
func NewFromClient(cli *clientv3.Client, endpoints []string) *Etcd {
	e := newEtcd(endpoints, 0)
	e.cli = cli
	return e
}

func newEtcd(endpoints []string, requestTimeout time.Duration) *Etcd {
	if requestTimeout <= 0 {
		requestTimeout = DefaultRequestTimeout
	}
	done, closeAll := context.WithCancel(context.Background())
	return &Etcd{
		endpoints:      append([]string(nil), endpoints...),
		requestTimeout: requestTimeout,
		done:           done,
		closeAll:       closeAll,
	}
}

// Client is the underlying etcd client (for leader election with the concurrency package).
func (e *Etcd) Client() *clientv3.Client { return e.cli }

// Close ends every watch and, if New made the client, closes it.
func (e *Etcd) Close() error {
	e.closeAll()
	if !e.ownsClient {
		return nil
	}
	if err := e.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("close etcd client: %w", err)
	}
	return nil
}

// Get reads one key.
func (e *Etcd) Get(ctx context.Context, key string) (KV, error) {
	ctx, cancel, start := e.request(ctx)
	defer cancel()
	resp, err := e.cli.Get(ctx, key)
	if err != nil {
		return KV{}, e.wrap("get", key, start, err)
	}
	if len(resp.Kvs) == 0 {
		return KV{}, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	return kvFrom(resp.Kvs[0]), nil
}

// List reads every key under prefix, sorted by key, and the revision it read at.
func (e *Etcd) List(ctx context.Context, prefix string) ([]KV, int64, error) {
	ctx, cancel, start := e.request(ctx)
	defer cancel()
	resp, err := e.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, e.wrap("list", prefix, start, err)
	}
	kvs := make([]KV, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		kvs[i] = kvFrom(kv)
	}
	return kvs, resp.Header.Revision, nil
}

// Create writes key if it does not exist.
func (e *Etcd) Create(ctx context.Context, key string, value []byte) (int64, error) {
	return e.Txn(ctx, OpCreate(key, value))
}

// Update overwrites key if it is still at rev (any revision when rev is 0).
func (e *Etcd) Update(ctx context.Context, key string, value []byte, rev int64) (int64, error) {
	return e.Txn(ctx, OpUpdate(key, value, rev))
}

// Delete removes key if it is still at rev (any revision when rev is 0).
func (e *Etcd) Delete(ctx context.Context, key string, rev int64) error {
	_, err := e.Txn(ctx, OpDelete(key, rev))
	return err
}

// Txn applies every op if every guard holds, in one round trip. When a guard fails, the same transaction reads
// the guarded keys, so the error can name the first failed guard and the revision found without another read.
func (e *Etcd) Txn(ctx context.Context, ops ...Op) (int64, error) {
	cmps := make([]clientv3.Cmp, 0, len(ops))
	thens := make([]clientv3.Op, 0, len(ops))
	var elses []clientv3.Op
	for _, op := range ops {
		if then, ok := op.then(); ok {
			thens = append(thens, then)
		}
		if op.guarded() {
			cmps = append(cmps, op.compare())
			elses = append(elses, op.orElse())
		}
	}

	ctx, cancel, start := e.request(ctx)
	defer cancel()
	resp, err := e.cli.Txn(ctx).If(cmps...).Then(thens...).Else(elses...).Commit()
	if err != nil {
		return 0, e.wrap(txnVerb(ops), txnKey(ops), start, err)
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	i := 0
	for _, op := range ops {
		if !op.guarded() {
			continue
		}
		if err := op.guardError(resp.Responses[i].GetResponseRange().GetKvs()); err != nil {
			return 0, err
		}
		i++
	}
	// Not reached: the reads ran atomically with the failed compares, so one of them explains it.
	return 0, fmt.Errorf("%s %s: %w (a guard failed at revision %d)", txnVerb(ops), txnKey(ops), ErrConflict, resp.Header.Revision)
}

// request applies the request timeout unless ctx has a deadline of its own.
func (e *Etcd) request(ctx context.Context) (context.Context, context.CancelFunc, time.Time) {
	start := time.Now()
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}, start
	}
	ctx, cancel := context.WithTimeout(ctx, e.requestTimeout)
	return ctx, cancel, start
}

func kvFrom(kv *mvccpb.KeyValue) KV {
	return KV{Key: string(kv.Key), Value: kv.Value, Revision: kv.ModRevision, CreateRevision: kv.CreateRevision}
}

// txnVerb and txnKey name a transaction in errors: by its op when it has one, else by its first key.
func txnVerb(ops []Op) string {
	if len(ops) == 1 {
		return ops[0].typ.String()
	}
	return "txn"
}

func txnKey(ops []Op) string {
	switch len(ops) {
	case 0:
		return "(no ops)"
	case 1:
		return ops[0].key
	}
	return fmt.Sprintf("%s (+%d more)", ops[0].key, len(ops)-1)
}
