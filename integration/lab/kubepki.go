package lab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kubePKI are the files of the lab's Kubernetes control plane: a CA, the
// API server's serving certificate (for 127.0.0.1, where it listens on the
// host and where the relay listens in every node), the service-account
// signing key pair, and a static token per identity.
type kubePKI struct {
	Dir        string
	CA         string
	CAPEM      []byte
	ServerCert string
	ServerKey  string
	SAPublic   string
	SAPrivate  string
	TokenFile  string
	Tokens     map[string]string // user -> token
}

// kubeUser is one identity of the token file. The lab's identities are all
// in system:masters: a credential per component and per node, not a
// least-privilege setup (manifests/base has the agent's RBAC).
type kubeUser struct{ name, group string }

// writeKubePKI creates the control plane's certificates, keys and token
// file in dir for users.
func writeKubePKI(dir string, users []kubeUser) (*kubePKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &kubePKI{Dir: dir, CA: filepath.Join(dir, "ca.crt"), ServerCert: filepath.Join(dir, "apiserver.crt"),
		ServerKey: filepath.Join(dir, "apiserver.key"), SAPublic: filepath.Join(dir, "sa.pub"), SAPrivate: filepath.Join(dir, "sa.key"),
		TokenFile: filepath.Join(dir, "tokens.csv"), Tokens: map[string]string{}}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rhizome-lab CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create the lab's CA certificate: %w", err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	p.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	if err := os.WriteFile(p.CA, p.CAPEM, 0o600); err != nil {
		return nil, err
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	srvTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		NotBefore:   now.Add(-time.Hour), NotAfter: now.Add(30 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create the API server's certificate: %w", err)
	}
	if err := writePEM(p.ServerCert, "CERTIFICATE", srvDER); err != nil {
		return nil, err
	}
	if err := writeECKey(p.ServerKey, srvKey); err != nil {
		return nil, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if err := writeECKey(p.SAPrivate, saKey); err != nil {
		return nil, err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.SAPublic, "PUBLIC KEY", saPub); err != nil {
		return nil, err
	}
	var lines strings.Builder
	for _, u := range users {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		p.Tokens[u.name] = hex.EncodeToString(b)
		fmt.Fprintf(&lines, "%s,%s,%s,%q\n", p.Tokens[u.name], u.name, u.name, u.group)
	}
	return p, os.WriteFile(p.TokenFile, []byte(lines.String()), 0o600)
}

// kubeconfig writes a kubeconfig for user at path, for the API server at
// server.
func (p *kubePKI) kubeconfig(path, server, user string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: p.CAPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: p.Tokens[user]}
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = "lab"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

func writeECKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "EC PRIVATE KEY", der)
}

func writePEM(path, typ string, der []byte) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
