// Package pki generates the certificates and keys of the test control plane:
// one CA, serving certificates for the apiserver and the fake kubelet, client
// certificates for the admin and for the apiserver's kubelet client, and the
// service-account signing key. Everything is written as PEM files under one
// directory and reused when it already exists.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files lists the paths of everything the control plane needs.
type Files struct {
	Dir              string
	CACert, CAKey    string
	ServingCert      string // kube-apiserver serving certificate
	ServingKey       string
	AdminCert        string // client certificate, group system:masters
	AdminKey         string
	KubeletCert      string // fake kubelet serving certificate (127.0.0.1)
	KubeletKey       string
	KubeletClientCrt string // apiserver -> kubelet client certificate
	KubeletClientKey string
	SAKey            string // service-account signing key (RSA, private)
	SAPub            string // service-account verification key (public)
}

// Paths returns the file names inside dir without creating anything.
func Paths(dir string) Files {
	p := func(n string) string { return filepath.Join(dir, n) }
	return Files{
		Dir:    dir,
		CACert: p("ca.crt"), CAKey: p("ca.key"),
		ServingCert: p("apiserver.crt"), ServingKey: p("apiserver.key"),
		AdminCert: p("admin.crt"), AdminKey: p("admin.key"),
		KubeletCert: p("kubelet.crt"), KubeletKey: p("kubelet.key"),
		KubeletClientCrt: p("apiserver-kubelet-client.crt"), KubeletClientKey: p("apiserver-kubelet-client.key"),
		SAKey: p("sa.key"), SAPub: p("sa.pub"),
	}
}

// Ensure creates every missing file. An existing set (same state directory
// reused) is kept, so kubeconfigs written earlier stay valid.
func Ensure(dir string) (Files, error) {
	f := Paths(dir)
	if _, err := os.Stat(f.SAPub); err == nil {
		return f, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, err
	}
	ca, caKey, err := newCA()
	if err != nil {
		return f, err
	}
	if err := writeCert(f.CACert, f.CAKey, ca, caKey); err != nil {
		return f, err
	}
	local := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	leafs := []struct {
		cert, key string
		tmpl      x509.Certificate
	}{
		{f.ServingCert, f.ServingKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver"},
			DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			IPAddresses: append(local, net.ParseIP("10.0.0.1")),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}},
		{f.AdminCert, f.AdminKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: "kubernetes-admin", Organization: []string{"system:masters"}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}},
		{f.KubeletCert, f.KubeletKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: "mongoferry-test-node"},
			DNSNames:    []string{"localhost"},
			IPAddresses: local,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}},
		{f.KubeletClientCrt, f.KubeletClientKey, x509.Certificate{
			Subject:     pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}},
	}
	for _, l := range leafs {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return f, err
		}
		tmpl := l.tmpl
		cert, err := sign(&tmpl, key.Public(), ca, caKey)
		if err != nil {
			return f, fmt.Errorf("%s: %w", l.cert, err)
		}
		if err := writeCert(l.cert, l.key, cert, key); err != nil {
			return f, err
		}
	}
	return f, writeSAKeys(f)
}

func newCA() (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "mongoferry-test-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func sign(tmpl *x509.Certificate, pub crypto.PublicKey, ca *x509.Certificate, caKey crypto.Signer) (*x509.Certificate, error) {
	tmpl.SerialNumber = serial()
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().AddDate(10, 0, 0)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n
}

func writeCert(certPath, keyPath string, cert *x509.Certificate, key crypto.Signer) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644)
}

// writeSAKeys writes the RSA key pair used to sign and verify
// service-account tokens (TokenRequest and projected volumes).
func writeSAKeys(f Files) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	priv := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(f.SAKey, priv, 0o600); err != nil {
		return err
	}
	return os.WriteFile(f.SAPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}
