package etcdtest

import (
	"net"
	"path/filepath"

	"github.com/rhizome-net/rhizome/internal/testpki"
)

// certFiles are the PEM files of a test PKI: one CA, a server certificate for 127.0.0.1 and localhost, and a
// client certificate.
type certFiles struct {
	CA, ServerCert, ServerKey, ClientCert, ClientKey string
}

// writeCerts creates a fresh CA and the certificates it signs in dir.
func writeCerts(dir string) (certFiles, error) {
	f := certFiles{
		CA:         filepath.Join(dir, "ca.pem"),
		ServerCert: filepath.Join(dir, "server.pem"),
		ServerKey:  filepath.Join(dir, "server-key.pem"),
		ClientCert: filepath.Join(dir, "client.pem"),
		ClientKey:  filepath.Join(dir, "client-key.pem"),
	}
	ca, err := testpki.NewCA("rhizome test etcd CA")
	if err != nil {
		return f, err
	}
	if err := ca.WriteCert(f.CA); err != nil {
		return f, err
	}
	// The server certificate also serves as a client one inside etcd.
	err = ca.WriteLeaf(f.ServerCert, f.ServerKey, testpki.Leaf{CommonName: "etcd", Server: true, Client: true,
		IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, DNSNames: []string{"localhost"}})
	if err != nil {
		return f, err
	}
	return f, ca.WriteLeaf(f.ClientCert, f.ClientKey, testpki.Leaf{CommonName: "rhizome", Client: true})
}
