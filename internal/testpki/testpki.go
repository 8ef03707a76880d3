// Package testpki writes throwaway certificate authorities, the
// certificates they sign and the files a Kubernetes API server starts
// with, for the tests and the lab: etcd with TLS (datastore/etcdtest),
// kube-apiserver (integration/kubetest, integration/lab). Keys are P-256,
// certificates valid from an hour ago for 30 days. Nothing here is fit for
// a real cluster.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"
)

// CA is a certificate authority made for one test or lab.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// PEM is the CA certificate, for clients to trust.
	PEM []byte
}

// Leaf is a certificate for the CA to sign.
type Leaf struct {
	CommonName string
	IPs        []net.IP
	DNSNames   []string
	// Server and Client are the extended key usages.
	Server, Client bool
}

func validity() (notBefore, notAfter time.Time) {
	now := time.Now()
	return now.Add(-time.Hour), now.Add(30 * 24 * time.Hour)
}

func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, fmt.Errorf("certificate serial number: %w", err)
	}
	return n, nil
}

// NewCA makes a CA named commonName.
func NewCA(commonName string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	from, to := validity()
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: commonName}, NotBefore: from, NotAfter: to,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate %q: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{cert: cert, key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// WriteCert writes the CA certificate to path.
func (ca *CA) WriteCert(path string) error { return writeFile(path, ca.PEM) }

// WriteLeaf signs l with a new key and writes the certificate and the key
// (PKCS #8) as PEM files.
func (ca *CA) WriteLeaf(certPath, keyPath string, l Leaf) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("key for %q: %w", l.CommonName, err)
	}
	sn, err := serial()
	if err != nil {
		return err
	}
	from, to := validity()
	tmpl := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: l.CommonName}, NotBefore: from, NotAfter: to,
		IPAddresses: l.IPs, DNSNames: l.DNSNames, KeyUsage: x509.KeyUsageDigitalSignature}
	if l.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if l.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return fmt.Errorf("create certificate %q: %w", l.CommonName, err)
	}
	if err := writePEM(certPath, "CERTIFICATE", der); err != nil {
		return err
	}
	return writePrivateKey(keyPath, key)
}

// WriteSigningKeyPair writes a new key (PKCS #8) and its public half
// (PKIX), as PEM files: what kube-apiserver signs and checks
// service-account tokens with.
func WriteSigningKeyPair(privatePath, publicPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("signing key: %w", err)
	}
	if err := writePrivateKey(privatePath, key); err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return fmt.Errorf("public key for %s: %w", publicPath, err)
	}
	return writePEM(publicPath, "PUBLIC KEY", pub)
}

func writePrivateKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("key for %s: %w", path, err)
	}
	return writePEM(path, "PRIVATE KEY", der)
}

func writePEM(path, blockType string, der []byte) error {
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der}))
}

func writeFile(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
