package lab

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// ServeEtcd runs the lab's etcd until ctx ends: data in dir, clients on
// the unix socket only (it runs in a namespace of its own; agents in other
// namespaces reach it through the socket file).
func ServeEtcd(ctx context.Context, dir, socket string) error {
	_ = os.Remove(socket)
	cfg := embed.NewConfig()
	cfg.Name = "rhizome-lab"
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

// Respond answers every TCP connection on port with name and a newline:
// the lab's pods run it so connectivity is checked with real TCP. With
// peer it answers with the address the connection came from instead.
func Respond(ctx context.Context, port int, name string, peer bool) error {
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if peer {
				host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
				fmt.Fprintln(c, host)
				return
			}
			fmt.Fprintln(c, name)
		}()
	}
}
