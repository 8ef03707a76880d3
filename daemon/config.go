// Package daemon is rhizome-node, the per-node agent: its configuration
// (Config, the flags and RHIZOME_* variables), its command line, and the
// wiring of its parts: node registration (nodereg), Kubernetes (kube), the
// CNI service (cnisvc), routing with BGP (netstate, routing, kernel) and
// the controller role (controller). It serves the status API and metrics,
// installs and uninstalls the CNI plugin.
package daemon

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/rhizome-net/rhizome/daemon/nodereg"
)

// Config is everything the agent is told at start. Each field has one flag
// and one RHIZOME_* environment variable (see Settings); the flag wins. It
// has more fields than any other type of the agent on purpose: one per
// setting, a plain value that the parts receive piece by piece.
type Config struct {
	NodeName string

	EtcdEndpoints             []string
	EtcdCert, EtcdKey, EtcdCA string

	Kubernetes string // auto, true or false
	Kubeconfig string

	CNISocket  string
	StatusAddr string
	CNIBinDir  string
	CNIConfDir string

	Networking string // bgp, vxlan or none
	Namespace  string // of the agent's pod: where BGP password Secrets are read

	IPAutodetection string
	IP              string // explicit node address in CIDR form; overrides autodetection

	DefaultIPv4PoolCIDR        string
	DefaultIPv4PoolIPIP        string
	DefaultIPv4PoolNATOutgoing bool

	MTU int

	HeartbeatInterval  time.Duration
	NodeTTL            time.Duration
	LeakGracePeriod    time.Duration
	ControllerInterval time.Duration
	BlockIdleRelease   time.Duration

	LogLevel, LogFormat string
}

// Setting describes one configuration knob: its flag, its environment
// variable, its default and what it does. The README's table is this list.
type Setting struct {
	Flag, Env, Default, Help string
}

// settings binds every Config field to a flag and an environment variable.
func (c *Config) settings() []struct {
	Setting
	bind func(fs *pflag.FlagSet, s Setting)
} {
	str := func(p *string) func(*pflag.FlagSet, Setting) {
		return func(fs *pflag.FlagSet, s Setting) { fs.StringVar(p, s.Flag, s.Default, s.Help) }
	}
	list := func(p *[]string) func(*pflag.FlagSet, Setting) {
		return func(fs *pflag.FlagSet, s Setting) {
			fs.StringSliceVar(p, s.Flag, strings.Split(s.Default, ","), s.Help)
		}
	}
	dur := func(p *time.Duration) func(*pflag.FlagSet, Setting) {
		return func(fs *pflag.FlagSet, s Setting) {
			d, _ := time.ParseDuration(s.Default)
			fs.DurationVar(p, s.Flag, d, s.Help)
		}
	}
	integer := func(p *int) func(*pflag.FlagSet, Setting) {
		return func(fs *pflag.FlagSet, s Setting) {
			n, _ := strconv.Atoi(s.Default)
			fs.IntVar(p, s.Flag, n, s.Help)
		}
	}
	boolean := func(p *bool) func(*pflag.FlagSet, Setting) {
		return func(fs *pflag.FlagSet, s Setting) {
			b, _ := strconv.ParseBool(s.Default)
			fs.BoolVar(p, s.Flag, b, s.Help)
		}
	}
	host, _ := os.Hostname()
	type entry = struct {
		Setting
		bind func(fs *pflag.FlagSet, s Setting)
	}
	return []entry{
		{Setting{"node-name", "RHIZOME_NODENAME", host, "name of this node (in Kubernetes: spec.nodeName; NODENAME is read too)"}, str(&c.NodeName)},
		{Setting{"etcd-endpoints", "RHIZOME_ETCD_ENDPOINTS", "http://127.0.0.1:2379", "etcd client URLs, comma-separated"}, list(&c.EtcdEndpoints)},
		{Setting{"etcd-cert", "RHIZOME_ETCD_CERT_FILE", "", "etcd client certificate"}, str(&c.EtcdCert)},
		{Setting{"etcd-key", "RHIZOME_ETCD_KEY_FILE", "", "etcd client key"}, str(&c.EtcdKey)},
		{Setting{"etcd-ca", "RHIZOME_ETCD_CA_FILE", "", "CA bundle that signs etcd's server certificate"}, str(&c.EtcdCA)},
		{Setting{"kubernetes", "RHIZOME_KUBERNETES", "auto", "use the Kubernetes API for labels, annotations and live pods: auto (when in a cluster or given a kubeconfig), true or false"}, str(&c.Kubernetes)},
		{Setting{"kubeconfig", "RHIZOME_KUBECONFIG", "", "kubeconfig file (KUBECONFIG is read too); empty in a pod: in-cluster"}, str(&c.Kubeconfig)},
		{Setting{"cni-socket", "RHIZOME_CNI_SOCKET", "/var/run/rhizome/cni.sock", "unix socket the CNI plugins call"}, str(&c.CNISocket)},
		{Setting{"cni-bin-dir", "RHIZOME_CNI_BIN_DIR", "/opt/cni/bin", "directory of the CNI plugin binaries (install-cni writes rhizome's there, --cleanup removes them)"}, str(&c.CNIBinDir)},
		{Setting{"cni-conf-dir", "RHIZOME_CNI_CONF_DIR", "/etc/cni/net.d", "directory of the CNI network configurations (install-cni writes " + ConflistName + ", --cleanup removes it)"}, str(&c.CNIConfDir)},
		{Setting{"status-addr", "RHIZOME_STATUS_ADDR", "127.0.0.1:9099", "address of /livez, /readyz, /metrics and the status API"}, str(&c.StatusAddr)},
		{Setting{"networking", "RHIZOME_NETWORKING", "bgp", "bgp: run the BGP speaker and program routes, tunl0, vxlan.rhizome and natOutgoing (VXLAN pools' routes come from the datastore, the others' from BGP); vxlan: the same with no BGP speaker, routes only for VXLAN pools, from the datastore; none: IPAM and CNI only (another component routes pod traffic)"}, str(&c.Networking)},
		{Setting{"namespace", "RHIZOME_NAMESPACE", "kube-system", "namespace of the Secrets that BGP passwords (secretKeyRef) name; POD_NAMESPACE is read too"}, str(&c.Namespace)},
		{Setting{"ip-autodetection", "RHIZOME_IP_AUTODETECTION_METHOD", "first-found", "how to find the node address: first-found, interface=REGEX, can-reach=IP, cidr=CIDR[,CIDR]"}, str(&c.IPAutodetection)},
		{Setting{"ip", "RHIZOME_IP", "", "the node's IPv4 address in CIDR form (10.0.0.5/24); overrides autodetection"}, str(&c.IP)},
		{Setting{"default-ipv4-pool-cidr", "RHIZOME_DEFAULT_IPV4_POOL_CIDR", "192.168.0.0/16", "CIDR of default-ipv4-ippool, created when the cluster has no pool; empty: none"}, str(&c.DefaultIPv4PoolCIDR)},
		{Setting{"default-ipv4-pool-ipip", "RHIZOME_DEFAULT_IPV4_POOL_IPIP", "Always", "ipipMode of the default pool: Always, CrossSubnet or Never"}, str(&c.DefaultIPv4PoolIPIP)},
		{Setting{"default-ipv4-pool-nat-outgoing", "RHIZOME_DEFAULT_IPV4_POOL_NAT_OUTGOING", "true", "natOutgoing of the default pool"}, boolean(&c.DefaultIPv4PoolNATOutgoing)},
		{Setting{"mtu", "RHIZOME_MTU", "0", "pod MTU handed to the CNI plugin; 0: the uplink's minus encapsulation overhead"}, integer(&c.MTU)},
		{Setting{"heartbeat-interval", "RHIZOME_HEARTBEAT_INTERVAL", "10s", "how often the node's status in the datastore is refreshed"}, dur(&c.HeartbeatInterval)},
		{Setting{"node-ttl", "RHIZOME_NODE_TTL", "5m", "without Kubernetes: a node whose heartbeat is older is gone, and its blocks are released"}, dur(&c.NodeTTL)},
		{Setting{"leak-grace-period", "RHIZOME_LEAK_GRACE_PERIOD", "10m", "an address with no live pod for this long is released by the controller; 0 disables"}, dur(&c.LeakGracePeriod)},
		{Setting{"controller-interval", "RHIZOME_CONTROLLER_INTERVAL", "1m", "how often the controller looks for gone nodes and leaked addresses"}, dur(&c.ControllerInterval)},
		{Setting{"block-idle-release", "RHIZOME_BLOCK_IDLE_RELEASE", "15m", "an empty affine block (not the node's first) is released after this long"}, dur(&c.BlockIdleRelease)},
		{Setting{"log-level", "RHIZOME_LOG_LEVEL", "info", "debug, info, warn or error"}, str(&c.LogLevel)},
		{Setting{"log-format", "RHIZOME_LOG_FORMAT", "text", "text or json"}, str(&c.LogFormat)},
	}
}

// Settings lists every knob, for documentation.
func Settings() []Setting {
	var c Config
	var out []Setting
	for _, e := range c.settings() {
		out = append(out, e.Setting)
	}
	return out
}

// BindFlags registers the flags on fs with defaults taken from the
// environment where set, so a flag overrides its variable.
func (c *Config) BindFlags(fs *pflag.FlagSet, getenv func(string) string) {
	for _, e := range c.settings() {
		s := e.Setting
		if v := getenv(s.Env); v != "" {
			s.Default = v
		} else if alt := altEnv[s.Env]; alt != "" && getenv(alt) != "" {
			s.Default = getenv(alt)
		}
		s.Help += " [" + s.Env + "]"
		e.bind(fs, s)
	}
}

// altEnv are the conventional variables also read.
var altEnv = map[string]string{
	"RHIZOME_NODENAME":   "NODENAME",
	"RHIZOME_KUBECONFIG": "KUBECONFIG",
	"RHIZOME_NAMESPACE":  "POD_NAMESPACE",
}

// Validate checks the configuration and names the first bad setting.
func (c *Config) Validate() error {
	switch {
	case c.NodeName == "":
		return fmt.Errorf("node-name is empty: set RHIZOME_NODENAME (in a DaemonSet, from spec.nodeName)")
	case len(c.EtcdEndpoints) == 0 || c.EtcdEndpoints[0] == "":
		return fmt.Errorf("etcd-endpoints is empty: set RHIZOME_ETCD_ENDPOINTS, for example https://10.0.0.1:2379")
	case c.Kubernetes != "auto" && c.Kubernetes != "true" && c.Kubernetes != "false":
		return fmt.Errorf("kubernetes %q: want auto, true or false", c.Kubernetes)
	case c.Networking != "bgp" && c.Networking != "vxlan" && c.Networking != "none":
		return fmt.Errorf("networking %q: want bgp, vxlan or none", c.Networking)
	case c.HeartbeatInterval <= 0:
		return fmt.Errorf("heartbeat-interval %s: must be positive", c.HeartbeatInterval)
	case c.ControllerInterval <= 0:
		return fmt.Errorf("controller-interval %s: must be positive", c.ControllerInterval)
	case c.MTU < 0 || (c.MTU > 0 && c.MTU < 576):
		return fmt.Errorf("mtu %d: want 0 (automatic) or at least 576", c.MTU)
	case c.LogFormat != "text" && c.LogFormat != "json":
		return fmt.Errorf("log-format %q: want text or json", c.LogFormat)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	if _, err := nodereg.ParseAutodetection(c.IPAutodetection); err != nil {
		return err
	}
	return nil
}
