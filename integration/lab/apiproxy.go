package lab

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// ServeAPIProxy relays TCP from listen inside each of the namespaces to
// target in the namespace the process runs in (the host's, where the API
// server listens on loopback). A socket made while a thread is in a
// namespace stays in it, so one process serves every node, and no traffic
// leaves loopback. It runs until ctx ends.
func ServeAPIProxy(ctx context.Context, log *slog.Logger, target, listen string, namespaces []string) error {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for _, ns := range namespaces {
		var ln net.Listener
		err := inNS(ns, func() error {
			var err error
			ln, err = net.Listen("tcp", listen)
			return err
		})
		if err != nil {
			return fmt.Errorf("listen on %s in namespace %s: %w", listen, ns, err)
		}
		lns = append(lns, ln)
	}
	log.Info("relaying to the API server", "target", target, "listen", listen, "namespaces", len(namespaces))
	var wg sync.WaitGroup
	for i, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					if ctx.Err() == nil {
						log.Error("accept", "namespace", namespaces[i], "err", err)
					}
					return
				}
				go relay(ctx, c, target)
			}
		}()
	}
	<-ctx.Done()
	for _, ln := range lns {
		ln.Close()
	}
	wg.Wait()
	return nil
}

// relay copies c to a new connection to target and back until either side
// closes.
func relay(ctx context.Context, c net.Conn, target string) {
	defer c.Close()
	up, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", target)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	select {
	case <-ctx.Done():
	case <-done:
		<-done
	}
}
