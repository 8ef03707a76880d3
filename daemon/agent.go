package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	"github.com/vishvananda/netns"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/cni/agentapi"
	"github.com/rhizome-net/rhizome/daemon/cnisvc"
	"github.com/rhizome-net/rhizome/daemon/controller"
	"github.com/rhizome-net/rhizome/daemon/kernel"
	"github.com/rhizome-net/rhizome/daemon/kube"
	"github.com/rhizome-net/rhizome/daemon/netstate"
	"github.com/rhizome-net/rhizome/daemon/nodereg"
	"github.com/rhizome-net/rhizome/daemon/nodestatus"
	"github.com/rhizome-net/rhizome/daemon/routing"
	"github.com/rhizome-net/rhizome/dataplane"
	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

// DefaultPoolName is the pool created when the cluster has none.
const DefaultPoolName = nodereg.DefaultPoolName

// Agent is one running rhizome-node: the parts, wired.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	version string
	started time.Time
	reg     *prometheus.Registry
	m       *metrics

	store   datastore.Store
	elector interface {
		controller.Elector
		io.Closer
	}
	alloc   *ipam.Allocator
	node    *nodereg.Registrar
	addr    netip.Prefix
	kube    kubernetes.Interface // nil without Kubernetes
	watcher *kube.Watcher        // nil without Kubernetes
	net     *network             // nil with networking none
	serving atomic.Bool
}

// network are the routing parts: the followed state, the BGP speaker (nil
// with networking vxlan) and the kernel.
type network struct {
	state   *netstate.State
	speaker *routing.Speaker
	kernel  *kernel.Kernel
}

// Run starts the agent and serves until ctx ends (SIGTERM), then stops
// cleanly: the socket is removed, and nothing that was allocated or
// claimed is released, so the next start adopts it all.
func Run(ctx context.Context, cfg Config, log *slog.Logger, version string) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	a := &Agent{cfg: cfg, log: log.With("node", cfg.NodeName), version: version, reg: prometheus.NewRegistry(), started: time.Now()}
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
	if a.elector != nil {
		_ = a.elector.Close()
	}
	if a.store != nil {
		_ = a.store.Close()
	}
}

// start connects to the datastore and Kubernetes, registers the node and
// starts its allocator and the routing parts.
func (a *Agent) start(ctx context.Context) error {
	cfg := a.cfg
	dcfg := datastore.Config{Endpoints: cfg.EtcdEndpoints, CertFile: cfg.EtcdCert, KeyFile: cfg.EtcdKey, CAFile: cfg.EtcdCA}
	store, err := datastore.New(dcfg)
	if err != nil {
		return err
	}
	a.store = store
	if a.elector, err = datastore.NewElection(dcfg, controller.ElectionPrefix, 15*time.Second); err != nil {
		return err
	}
	res := datastore.NewResources(store)
	if a.addr, err = nodereg.Address(cfg.IP, cfg.IPAutodetection, a.log); err != nil {
		return err
	}
	var labels map[string]string
	if a.kubernetesEnabled() {
		klog.SetSlogLogger(a.log.With("component", "client-go")) // client-go logs through klog
		if a.kube, err = kube.Client(cfg.Kubeconfig); err != nil {
			return err
		}
		a.watcher = kube.NewWatcher(a.kube, cfg.NodeName, a.log)
		if err := a.watcher.Start(ctx); err != nil {
			return err
		}
		if labels, err = a.watcher.NodeLabels(ctx); err != nil {
			return err
		}
	}
	a.node = nodereg.NewRegistrar(res, nodereg.Facts{Name: cfg.NodeName, IPv4: a.addr, Version: a.version, Kubernetes: a.kube != nil},
		nodereg.WithLogger(a.log), nodereg.OnLabels(func(l map[string]string) {
			// Place pods by the new labels before the Node shows them.
			if a.alloc != nil {
				a.alloc.SetNodeLabels(l)
			}
		}))
	if a.watcher != nil {
		a.watcher.OnLabels(a.node.Relabel)
	}
	if err := a.node.Register(ctx, labels); err != nil {
		return err
	}
	if created, err := nodereg.EnsureDefaultPool(ctx, res, cfg.DefaultIPv4PoolCIDR, cfg.DefaultIPv4PoolIPIP, cfg.DefaultIPv4PoolNATOutgoing); err != nil {
		return err
	} else if created {
		a.log.Info("created the default pool: the cluster had none", "pool", DefaultPoolName, "cidr", cfg.DefaultIPv4PoolCIDR)
	}
	a.alloc, err = ipam.NewAllocator(ctx, store, cfg.NodeName, ipam.WithLogger(a.log), ipam.WithIdleRelease(cfg.BlockIdleRelease))
	if err != nil {
		return fmt.Errorf("start the IPAM allocator: %w", err)
	}
	if cfg.Networking == "bgp" || cfg.Networking == "vxlan" {
		// The kernel part computes the VXLAN routes from the state itself
		// (they come first); with bgp, the speaker's are the second source.
		st := netstate.New(cfg.NodeName)
		nw := &network{state: st}
		var sources []kernel.RouteSource
		if cfg.Networking == "bgp" {
			nw.speaker = routing.New(cfg.NodeName, a.addr.Addr(), st, routing.WithLogger(a.log), routing.WithRegisterer(a.reg),
				routing.WithPasswords(passwords(cfg.Namespace, a.kube)))
			sources = append(sources, nw.speaker.Learned())
		}
		if nw.kernel, err = kernel.Open(kernel.Deps{Node: cfg.NodeName, Addr: a.addr.Addr(), State: st, Alloc: a.alloc, Store: store, Log: a.log},
			sources...); err != nil {
			return err
		}
		a.net = nw
	}
	return nil
}

func (a *Agent) kubernetesEnabled() bool {
	switch a.cfg.Kubernetes {
	case "true":
		return true
	case "false":
		return false
	}
	_, inCluster := os.LookupEnv("KUBERNETES_SERVICE_HOST")
	return inCluster || a.cfg.Kubeconfig != ""
}

// serve runs the CNI socket, the status server, the heartbeat, the
// routing parts and the controller until ctx ends.
func (a *Agent) serve(ctx context.Context) error {
	var pods cnisvc.PodInfo
	if a.watcher != nil {
		pods = kube.PodInfo{W: a.watcher}
	}
	svc, err := cnisvc.New(cnisvc.Config{
		Allocator: a.alloc, Store: a.store, MTU: a.podMTU(ctx), Log: a.log, Pods: pods,
		Ready: func(context.Context) error { return a.ready() },
	})
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
	run(func() { a.node.Run(ctx, a.cfg.HeartbeatInterval, a.nodeStatus) })
	if a.net != nil {
		run(func() { a.net.state.Run(ctx, a.store, a.log) })
		if a.net.speaker != nil {
			run(func() { a.net.speaker.Run(ctx) })
		}
		run(func() { a.net.kernel.Run(ctx) })
	}
	var view controller.ClusterView = controller.HeartbeatView{TTL: a.cfg.NodeTTL}
	if a.kube != nil {
		view = kube.NewClusterView(a.kube, a.cfg.NodeTTL)
	}
	ctl := controller.New(a.store, view, controller.WithLogger(a.log.With("role", "controller")),
		controller.WithGracePeriod(a.cfg.LeakGracePeriod), controller.WithMetrics(controller.Metrics{Leader: a.m.leader, Releases: a.m.gcReleases}))
	// The election's client is closed when the agent stops: a campaign
	// cancelled while etcd is unreachable would otherwise hold the exit.
	run(func() { <-ctx.Done(); _ = a.elector.Close() })
	run(func() { ctl.Run(ctx, a.elector, a.cfg.NodeName, a.cfg.ControllerInterval) })

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

// nodeStatus is what the heartbeat writes: the node's IPAM, BGP sessions
// and conditions; it updates the IPAM metrics too.
func (a *Agent) nodeStatus(ctx context.Context) api.NodeStatus {
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
		if a.net.speaker != nil {
			st.BGPPeersUp, st.BGPPeers = a.net.speaker.PeersUp()
		}
		st.Conditions = a.net.kernel.Conditions()
	}
	return st
}

// ready: the datastore answered recently, the Node is registered and the
// socket is served.
func (a *Agent) ready() error {
	if err := a.node.Ready(3*a.cfg.HeartbeatInterval + 5*time.Second); err != nil {
		return err
	}
	if !a.serving.Load() {
		return errors.New("CNI socket not served yet")
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
		r.Networking = a.cfg.Networking
		if a.net.speaker != nil {
			a.net.speaker.Report(ctx, r)
		}
		a.net.kernel.Report(r)
	}
	return r
}

// podMTU is RHIZOME_MTU, or the uplink's MTU less the encapsulation of the
// cluster's pools at start (disabled ones too: their pods' routes stay
// encapsulated).
func (a *Agent) podMTU(ctx context.Context) int {
	if a.cfg.MTU > 0 {
		return a.cfg.MTU
	}
	up, err := dataplane.FindUplink(netns.None(), a.addr.Addr())
	if err != nil || up.MTU == 0 {
		return 0
	}
	pools, _, err := datastore.NewResources(a.store).ListPools(ctx)
	if err != nil {
		return 0
	}
	return dataplane.PodMTU(up.MTU, kernel.Pools(pools))
}
