// Package etcdserver runs an etcd member inside the process, for tools that
// need a datastore and have no etcd binary (the lab). It is part of the
// etcd backend: nothing outside package datastore and its subpackages
// imports etcd.
package etcdserver

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// Serve runs a single-member etcd named name until ctx ends: data in dir,
// clients on the unix socket only (its peer port, 127.0.0.1:2380, serves
// no one else). It returns nil when ctx ends, or the error that stopped
// the server.
func Serve(ctx context.Context, name, dir, socket string) error {
	_ = os.Remove(socket)
	cfg := embed.NewConfig()
	cfg.Name = name
	cfg.Dir = dir
	client := url.URL{Scheme: "unix", Host: socket}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	peer := url.URL{Scheme: "http", Host: "127.0.0.1:2380"}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "warn"
	cfg.EnableGRPCGateway = false
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		return fmt.Errorf("etcd not ready after 30s")
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-e.Err():
		return err
	}
}
