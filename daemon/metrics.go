package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rhizome-net/rhizome/cni/agentapi"
)

// metrics are the agent's own; they go to the registry the agent is given.
type metrics struct {
	allocLatency *prometheus.HistogramVec
	requests     *prometheus.CounterVec
	gcReleases   *prometheus.CounterVec
	blocks       prometheus.Gauge
	inUse        prometheus.Gauge
	leader       prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		allocLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "rhizome_ipam_request_duration_seconds",
			Help:    "Time to answer a CNI request, by operation (add, del, check, gc).",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"op"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rhizome_cni_requests_total",
			Help: "CNI requests answered, by operation and result (ok, or the error's reason).",
		}, []string{"op", "result"}),
		gcReleases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rhizome_ipam_gc_releases_total",
			Help: "Addresses freed by garbage collection, by reason (pod-gone, node-gone, cni-gc).",
		}, []string{"reason"}),
		blocks: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "rhizome_ipam_blocks",
			Help: "Address blocks affine to this node.",
		}),
		inUse: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "rhizome_ipam_addresses_in_use",
			Help: "Addresses in use in the blocks affine to this node.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "rhizome_controller_leader",
			Help: "1 while this agent runs the controller.",
		}),
	}
	reg.MustRegister(m.allocLatency, m.requests, m.gcReleases, m.blocks, m.inUse, m.leader)
	return m
}

// instrumented counts and times the CNI requests a backend answers.
type instrumented struct {
	b agentapi.Backend
	m *metrics
}

func (i instrumented) observe(op string, start time.Time, err error) {
	i.m.allocLatency.WithLabelValues(op).Observe(time.Since(start).Seconds())
	result := "ok"
	var e *agentapi.Error
	switch {
	case errors.As(err, &e):
		result = fmt.Sprintf("code-%d", e.Code)
	case err != nil:
		result = "error"
	}
	i.m.requests.WithLabelValues(op, result).Inc()
}

func (i instrumented) Add(ctx context.Context, req *agentapi.AddRequest) (*agentapi.AddResponse, error) {
	start := time.Now()
	r, err := i.b.Add(ctx, req)
	i.observe("add", start, err)
	return r, err
}

func (i instrumented) Del(ctx context.Context, req *agentapi.DelRequest) error {
	start := time.Now()
	err := i.b.Del(ctx, req)
	i.observe("del", start, err)
	return err
}

func (i instrumented) Check(ctx context.Context, req *agentapi.CheckRequest) error {
	start := time.Now()
	err := i.b.Check(ctx, req)
	i.observe("check", start, err)
	return err
}

func (i instrumented) GC(ctx context.Context, req *agentapi.GCRequest) (*agentapi.GCResponse, error) {
	start := time.Now()
	r, err := i.b.GC(ctx, req)
	i.observe("gc", start, err)
	if r != nil {
		i.m.gcReleases.WithLabelValues("cni-gc").Add(float64(len(r.Released)))
	}
	return r, err
}

func (i instrumented) Status(ctx context.Context) (*agentapi.StatusResponse, error) {
	return i.b.Status(ctx)
}
