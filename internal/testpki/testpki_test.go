package testpki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/tools/clientcmd"
)

// A server and a client certificate of one CA complete a TLS handshake
// with each other, the server checked for 127.0.0.1 and the client
// required, as etcd and kube-apiserver do.
func TestLeavesHandshake(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	if err := ca.WriteLeaf(p("srv.crt"), p("srv.key"), Leaf{CommonName: "srv", Server: true, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}}); err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteLeaf(p("cli.crt"), p("cli.key"), Leaf{CommonName: "cli", Client: true}); err != nil {
		t.Fatal(err)
	}
	srv, err := tls.LoadX509KeyPair(p("srv.crt"), p("srv.key"))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := tls.LoadX509KeyPair(p("cli.crt"), p("cli.key"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.PEM) {
		t.Fatal("CA PEM does not parse")
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{srv}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			err = c.(*tls.Conn).Handshake()
			c.Close()
		}
		done <- err
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cli}})
	if err != nil {
		t.Fatalf("client handshake: %v", err)
	}
	c.Close()
	if err := <-done; err != nil {
		t.Fatalf("server handshake: %v", err)
	}
	// The client certificate is no server certificate.
	if _, err := cli.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("the client certificate verifies for server auth")
	}
}

func TestAPIServerFiles(t *testing.T) {
	dir := t.TempDir()
	p, err := WriteAPIServer(filepath.Join(dir, "kube"), []User{{"admin", "system:masters"}, {"system:node:n1", "system:nodes"}})
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := os.ReadFile(p.TokenFile)
	if err != nil {
		t.Fatal(err)
	}
	want := p.Tokens["admin"] + `,admin,admin,"system:masters"` + "\n" + p.Tokens["system:node:n1"] + `,system:node:n1,system:node:n1,"system:nodes"` + "\n"
	if string(tokens) != want || len(p.Tokens["admin"]) != 32 {
		t.Errorf("token file:\n%s\nwant:\n%s", tokens, want)
	}
	for _, f := range []string{p.CA, p.ServerCert, p.ServerKey, p.SAPublic, p.SAPrivate} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi, err)
		}
	}
	kc := filepath.Join(dir, "admin.kubeconfig")
	if err := p.Kubeconfig(kc, "https://127.0.0.1:6443", "admin"); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "https://127.0.0.1:6443" || cfg.BearerToken != p.Tokens["admin"] || string(cfg.CAData) != string(p.CAPEM) {
		t.Errorf("kubeconfig: host %s token %q", cfg.Host, cfg.BearerToken)
	}
	if err := p.Kubeconfig(kc, "https://127.0.0.1:6443", "nobody"); err == nil || !strings.Contains(err.Error(), `user "nobody"`) {
		t.Errorf("kubeconfig for an unknown user: %v", err)
	}
}
