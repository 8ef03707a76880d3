package daemon

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestConfigFromEnvironmentAndFlags(t *testing.T) {
	env := map[string]string{"RHIZOME_ETCD_ENDPOINTS": "https://10.0.0.1:2379,https://10.0.0.2:2379", "NODENAME": "kube-node-0",
		"RHIZOME_HEARTBEAT_INTERVAL": "3s", "RHIZOME_MTU": "1440"}
	var c Config
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	c.BindFlags(fs, func(k string) string { return env[k] })
	if err := fs.Parse([]string{"--mtu", "1400"}); err != nil {
		t.Fatal(err)
	}
	if c.NodeName != "kube-node-0" || len(c.EtcdEndpoints) != 2 || c.HeartbeatInterval != 3*time.Second || c.MTU != 1400 {
		t.Fatalf("config %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		change func(*Config)
		want   string
	}{
		{func(c *Config) { c.NodeName = "" }, "node-name is empty"},
		{func(c *Config) { c.MTU = 100 }, "mtu 100"},
		{func(c *Config) { c.Kubernetes = "maybe" }, `kubernetes "maybe"`},
		{func(c *Config) { c.IPAutodetection = "first" }, `unknown method "first"`},
		{func(c *Config) { c.LogLevel = "loud" }, `log-level "loud"`},
	} {
		bad := c
		tc.change(&bad)
		if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate: %v, want %q", err, tc.want)
		}
	}
	// Every setting has a flag and a RHIZOME_ variable, for the README's table.
	for _, s := range Settings() {
		if !strings.HasPrefix(s.Env, "RHIZOME_") || fs.Lookup(s.Flag) == nil {
			t.Errorf("setting %+v", s)
		}
	}
}
