package testpki

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// APIServer are the files kube-apiserver starts with: a CA, its serving
// certificate (for 127.0.0.1 and the in-cluster names), the key pair
// service-account tokens are signed with, and a static token per user.
type APIServer struct {
	CA         string
	CAPEM      []byte
	ServerCert string
	ServerKey  string
	SAPublic   string
	SAPrivate  string
	TokenFile  string
	// Tokens are the users' static tokens by user name.
	Tokens map[string]string
}

// User is one identity of the static token file.
type User struct{ Name, Group string }

// WriteAPIServer creates the files in dir (made if missing) for users.
func WriteAPIServer(dir string, users []User) (*APIServer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &APIServer{CA: filepath.Join(dir, "ca.crt"), ServerCert: filepath.Join(dir, "apiserver.crt"),
		ServerKey: filepath.Join(dir, "apiserver.key"), SAPublic: filepath.Join(dir, "sa.pub"),
		SAPrivate: filepath.Join(dir, "sa.key"), TokenFile: filepath.Join(dir, "tokens.csv"), Tokens: map[string]string{}}
	ca, err := NewCA("rhizome test Kubernetes CA")
	if err != nil {
		return nil, err
	}
	p.CAPEM = ca.PEM
	if err := ca.WriteCert(p.CA); err != nil {
		return nil, err
	}
	err = ca.WriteLeaf(p.ServerCert, p.ServerKey, Leaf{CommonName: "kube-apiserver", Server: true,
		IPs:      []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}})
	if err != nil {
		return nil, err
	}
	if err := WriteSigningKeyPair(p.SAPrivate, p.SAPublic); err != nil {
		return nil, err
	}
	var lines strings.Builder
	for _, u := range users {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
		p.Tokens[u.Name] = hex.EncodeToString(b)
		// token,user,uid,"group1,group2"
		fmt.Fprintf(&lines, "%s,%s,%s,%q\n", p.Tokens[u.Name], u.Name, u.Name, u.Group)
	}
	return p, writeFile(p.TokenFile, []byte(lines.String()))
}

// WriteKubeconfig writes a kubeconfig with one context: server, trusting
// caPEM, as user with token, in namespace.
func WriteKubeconfig(path, server string, caPEM []byte, user, token, namespace string) error {
	const name = "rhizome-test"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: user, Namespace: namespace}
	cfg.CurrentContext = name
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// Kubeconfig writes a kubeconfig for user (one of the token file's) in
// namespace default.
func (p *APIServer) Kubeconfig(path, server, user string) error {
	token, ok := p.Tokens[user]
	if !ok {
		return fmt.Errorf("kubeconfig %s: user %q is not in the token file", path, user)
	}
	return WriteKubeconfig(path, server, p.CAPEM, user, token, "default")
}
