package lab

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/rhizome-net/rhizome/datastore/etcdserver"
)

// ServeEtcd runs the lab's etcd until ctx ends: data in dir, clients on
// the unix socket only (it runs in a namespace of its own; agents in other
// namespaces reach it through the socket file).
func ServeEtcd(ctx context.Context, dir, socket string) error {
	return etcdserver.Serve(ctx, "rhizome-lab", dir, socket)
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
