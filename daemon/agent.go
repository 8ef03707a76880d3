package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/cni/agentapi"
	"github.com/rhizome-net/rhizome/daemon/cnisvc"
	"github.com/rhizome-net/rhizome/daemon/nodestatus"
	"github.com/rhizome-net/rhizome/dataplane"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

// Agent is one running rhizome-node.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	version string

	store *datastore.Etcd
	res   *datastore.Resources
	alloc *ipam.Allocator
	kube  *kube    // nil without Kubernetes
	net   *network // nil with networking none
	view  clusterView
	reg   *prometheus.Registry
	m     *metrics
	addr  netip.Prefix

	registered atomic.Bool
	serving    atomic.Bool
	lastBeat   atomic.Int64 // unix nanoseconds of the last successful heartbeat
	reregister chan map[string]string
	started    time.Time
}

// Run starts the agent and serves until ctx ends (SIGTERM), then stops
// cleanly: the socket is removed, and nothing that was allocated or
// claimed is released, so the next start adopts it all.
func Run(ctx context.Context, cfg Config, log *slog.Logger, version string) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	a := &Agent{cfg: cfg, log: log.With("node", cfg.NodeName), version: version, reg: prometheus.NewRegistry(), started: time.Now(),
		reregister: make(chan map[string]string, 1)}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.m = newMetrics(a.reg)
	defer a.close()
	if err := a.start(ctx); err != nil {
		return err
	}
	return a.serve(ctx)
}

func (a *Agent) close() {
	if a.alloc != nil {
		a.alloc.Close()
	}
	if a.store != nil {
		_ = a.store.Close()
	}
}

// start connects to the datastore and Kubernetes, registers the node and
// starts its allocator.
func (a *Agent) start(ctx context.Context) error {
	cfg := a.cfg
	store, err := datastore.New(datastore.Config{Endpoints: cfg.EtcdEndpoints, CertFile: cfg.EtcdCert, KeyFile: cfg.EtcdKey, CAFile: cfg.EtcdCA})
	if err != nil {
		return err
	}
	a.store, a.res = store, datastore.NewResources(store)

	if a.addr, err = a.nodeAddress(); err != nil {
		return err
	}
	a.view = heartbeatView{ttl: cfg.NodeTTL}
	var labels map[string]string
	if on, err := a.kubernetesEnabled(); err != nil {
		return err
	} else if on {
		klog.SetSlogLogger(a.log.With("component", "client-go")) // client-go logs through klog
		rc, err := kubeConfig(cfg.Kubeconfig)
		if err != nil {
			return err
		}
		client, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return fmt.Errorf("client for the Kubernetes API: %w", err)
		}
		a.kube = newKube(client, cfg.NodeName, a.log)
		if err := a.kube.Start(ctx); err != nil {
			return err
		}
		if labels, err = a.kube.NodeLabels(ctx); err != nil {
			return err
		}
		a.view = kubeView{client: client, ttl: cfg.NodeTTL}
		a.kube.OnLabels(func(l map[string]string) {
			select { // keep only the newest labels
			case <-a.reregister:
			default:
			}
			a.reregister <- l
		})
	}

	if err := a.register(ctx, labels); err != nil {
		return err
	}
	if created, err := ensureDefaultPool(ctx, a.res, cfg.DefaultIPv4PoolCIDR, cfg.DefaultIPv4PoolIPIP, cfg.DefaultIPv4PoolNATOutgoing); err != nil {
		return err
	} else if created {
		a.log.Info("created the default pool: the cluster had none", "pool", DefaultPoolName, "cidr", cfg.DefaultIPv4PoolCIDR)
	}
	a.alloc, err = ipam.NewAllocator(ctx, store, cfg.NodeName, ipam.WithLogger(a.log), ipam.WithIdleRelease(cfg.BlockIdleRelease))
	if err != nil {
		return fmt.Errorf("start the IPAM allocator: %w", err)
	}
	if cfg.Networking == "bgp" {
		a.net = newNetwork(a, a.passwords())
		if err := a.net.open(); err != nil {
			return err
		}
	}
	return nil
}

func (a *Agent) kubernetesEnabled() (bool, error) {
	switch a.cfg.Kubernetes {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	_, inCluster := os.LookupEnv("KUBERNETES_SERVICE_HOST")
	return inCluster || a.cfg.Kubeconfig != "", nil
}

// nodeAddress is RHIZOME_IP, or what autodetection finds.
func (a *Agent) nodeAddress() (netip.Prefix, error) {
	if a.cfg.IP != "" {
		p, err := netip.ParsePrefix(a.cfg.IP)
		if err != nil || !p.Addr().Is4() {
			return netip.Prefix{}, fmt.Errorf("ip %q: want the node's IPv4 address in CIDR form, for example 10.0.0.5/24", a.cfg.IP)
		}
		return p, nil
	}
	method, err := ParseAutodetection(a.cfg.IPAutodetection)
	if err != nil {
		return netip.Prefix{}, err
	}
	ifaces, err := HostInterfaces()
	if err != nil {
		return netip.Prefix{}, err
	}
	p, err := method.Detect(ifaces)
	if err != nil {
		return netip.Prefix{}, err
	}
	a.log.Info("node address autodetected", "addr", p, "method", method.String())
	return p, nil
}

func (a *Agent) register(ctx context.Context, labels map[string]string) error {
	globalRRID := api.DefaultRouteReflectorClusterID
	if obj, err := a.res.Get(ctx, api.KindBGPConfiguration, "default"); err == nil {
		globalRRID = api.EffectiveBGP(obj.(*api.BGPConfiguration), nil).RouteReflectorClusterID
	} else if !isNotFound(err) {
		return fmt.Errorf("read BGPConfiguration default: %w", err)
	}
	if a.kube != nil && a.alloc != nil {
		// Place pods by the new labels before the Node shows them.
		a.alloc.SetNodeLabels(labels)
	}
	n, err := registerNode(ctx, a.res, nodeFacts{name: a.cfg.NodeName, ipv4: a.addr, version: a.version, labels: labels,
		kubernetes: a.kube != nil}, globalRRID)
	if err != nil {
		return err
	}
	a.registered.Store(true)
	a.lastBeat.Store(time.Now().UnixNano())
	a.log.Info("node registered", "addr", n.Spec.BGP.IPv4Address, "labels", len(n.Labels),
		"routeReflectorClusterID", n.Spec.BGP.RouteReflectorClusterID)
	return nil
}

// serve runs the CNI socket, the status server, the heartbeat and the
// controller until ctx ends.
func (a *Agent) serve(ctx context.Context) error {
	svc, err := cnisvc.New(cnisvc.Config{
		Allocator: a.alloc, Store: a.store, MTU: a.podMTU(ctx), Log: a.log,
		Pods:  a.podInfo(),
		Ready: func(context.Context) error { return a.ready() },
	})
	if err != nil {
		return err
	}
	// The election has an etcd client of its own, closed when the agent
	// stops: a campaign cancelled while etcd is unreachable resigns with
	// the client's context and would otherwise hold the exit forever.
	elStore, err := datastore.New(datastore.Config{Endpoints: a.cfg.EtcdEndpoints, CertFile: a.cfg.EtcdCert, KeyFile: a.cfg.EtcdKey, CAFile: a.cfg.EtcdCA})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 3)
	var wg sync.WaitGroup
	run := func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() }

	run(func() {
		err := agentapi.Serve(ctx, a.cfg.CNISocket, instrumented{svc, a.m}, agentapi.WithServerLogger(a.log),
			agentapi.OnListening(func() {
				a.serving.Store(true)
				a.log.Info("serving CNI requests", "socket", a.cfg.CNISocket)
			}))
		a.serving.Store(false)
		if err != nil && ctx.Err() == nil {
			errs <- fmt.Errorf("CNI socket %s: %w", a.cfg.CNISocket, err)
		}
	})
	if a.cfg.StatusAddr != "" {
		ln, err := net.Listen("tcp", a.cfg.StatusAddr)
		if err != nil {
			return fmt.Errorf("status address %s: %w", a.cfg.StatusAddr, err)
		}
		srv := &http.Server{Handler: a.statusHandler(), ReadHeaderTimeout: 5 * time.Second}
		run(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs <- fmt.Errorf("status server: %w", err)
			}
		})
		run(func() {
			<-ctx.Done()
			sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
			defer c()
			_ = srv.Shutdown(sctx)
		})
	}
	run(func() { a.heartbeatLoop(ctx) })
	if a.net != nil {
		run(func() { a.net.run(ctx) })
	}
	ctl := &controller{store: a.store, res: a.res, view: a.view, log: a.log.With("role", "controller"),
		grace: a.cfg.LeakGracePeriod, metrics: a.m, now: time.Now, leakedAt: map[leakKey]time.Time{}}
	run(func() { <-ctx.Done(); _ = elStore.Close() })
	run(func() { ctl.runElected(ctx, elStore.Client(), a.cfg.NodeName, a.cfg.ControllerInterval) })

	var err2 error
	select {
	case <-ctx.Done():
	case err2 = <-errs:
	}
	cancel()
	wg.Wait()
	a.log.Info("stopped; allocations and blocks stay for the next start")
	return err2
}

// heartbeatLoop refreshes the Node's status, re-registers it when the
// Kubernetes Node's labels change, and counts the node's IPAM for metrics.
func (a *Agent) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case labels := <-a.reregister:
			if err := a.register(ctx, labels); err != nil && ctx.Err() == nil {
				a.log.Warn("update node labels", "err", err)
			}
		case <-t.C:
			var st api.NodeStatus
			if u, err := a.alloc.Usage(ctx); err == nil {
				a.m.blocks.Set(float64(len(u.Blocks)))
				a.m.inUse.Set(float64(u.InUse))
				for _, b := range u.Blocks {
					st.Blocks = append(st.Blocks, b.String())
				}
				st.IPsInUse, st.IPsFree = u.InUse, u.Free
			}
			if a.net != nil {
				st.BGPPeersUp, st.BGPPeers = a.net.peersUp()
				st.Conditions = a.net.nodeConditions()
			}
			if err := heartbeat(ctx, a.res, a.cfg.NodeName, a.version, st); err != nil {
				if ctx.Err() == nil {
					a.log.Warn("heartbeat", "err", err)
				}
				continue
			}
			a.lastBeat.Store(time.Now().UnixNano())
		}
	}
}

// ready: the datastore answered recently, the Node is registered and the
// socket is served.
func (a *Agent) ready() error {
	switch {
	case !a.registered.Load():
		return errors.New("node not registered yet")
	case !a.serving.Load():
		return errors.New("CNI socket not served yet")
	case time.Since(time.Unix(0, a.lastBeat.Load())) > 3*a.cfg.HeartbeatInterval+5*time.Second:
		return fmt.Errorf("datastore not reachable: no heartbeat written since %s", time.Unix(0, a.lastBeat.Load()).UTC().Format(time.RFC3339))
	}
	return nil
}

func (a *Agent) statusHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET "+nodestatus.Path, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(a.report(r.Context()))
	})
	return mux
}

// report is the status API's answer.
func (a *Agent) report(ctx context.Context) *nodestatus.Report {
	r := &nodestatus.Report{Node: a.cfg.NodeName, Version: a.version, Started: a.started, Networking: "none",
		Address: a.addr.String(), Peers: []nodestatus.Peer{}, Advertised: []string{}}
	if a.net != nil {
		a.net.report(ctx, r)
	}
	return r
}

// podMTU is RHIZOME_MTU, or the uplink's MTU less the encapsulation of the
// pools that select this node at start.
func (a *Agent) podMTU(ctx context.Context) int {
	if a.cfg.MTU > 0 {
		return a.cfg.MTU
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		return 0
	}
	uplink := 0
	for _, ifc := range ifaces {
		addrs, _ := ifc.Addrs()
		for _, ad := range addrs {
			if n, ok := ad.(*net.IPNet); ok && n.IP.Equal(net.IP(a.addr.Addr().AsSlice())) {
				uplink = ifc.MTU
			}
		}
	}
	if uplink == 0 {
		return 0
	}
	pools, _, err := a.res.ListPools(ctx)
	if err != nil {
		return 0
	}
	var dp []dataplane.Pool
	for _, p := range pools {
		c, err := netip.ParsePrefix(p.Spec.CIDR)
		if err == nil && !p.Spec.Disabled {
			dp = append(dp, dataplane.Pool{CIDR: c, IPIPMode: p.Spec.IPIPMode, VXLANMode: p.Spec.VXLANMode})
		}
	}
	return dataplane.PodMTU(uplink, dp)
}

// podInfo adapts the informers to the CNI service; nil without Kubernetes.
func (a *Agent) podInfo() cnisvc.PodInfo {
	if a.kube == nil {
		return nil
	}
	return kubePodInfo{a.kube}
}

type kubePodInfo struct{ k *kube }

func (p kubePodInfo) Pod(ctx context.Context, namespace, name string) (map[string]string, map[string]string, error) {
	pod, err := p.k.Pod(ctx, namespace, name)
	if err != nil {
		return nil, nil, notFound(err)
	}
	return pod.Annotations, pod.Labels, nil
}

func (p kubePodInfo) Namespace(ctx context.Context, name string) (map[string]string, map[string]string, error) {
	ns, err := p.k.Namespace(ctx, name)
	if err != nil {
		return nil, nil, notFound(err)
	}
	return ns.Annotations, ns.Labels, nil
}

func notFound(err error) error {
	if apierrors.IsNotFound(errors.Unwrap(err)) || apierrors.IsNotFound(err) {
		return fmt.Errorf("%w: %v", cnisvc.ErrNotFound, err)
	}
	return err
}
