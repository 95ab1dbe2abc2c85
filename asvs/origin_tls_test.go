package asvs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/testenv"
)

// TestOriginTLS (V9.1.1, V9.2.1): with GUARDIAN_SCHEME=https the site is
// served over TLS 1.2 or later with the origin certificate, and only a
// client presenting a certificate of the configured CA (Cloudflare's
// Authenticated Origin Pulls) completes a handshake; an unknown scheme
// stops Caddy from starting.
func TestOriginTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	serverCA := newCA(t, "origin CA")
	pullCA := newCA(t, "origin-pull CA")
	strangerCA := newCA(t, "another CA")
	cert, key := serverCA.issue(t, "localhost", false)
	writePEM(t, filepath.Join(dir, "origin.pem"), "CERTIFICATE", cert)
	writePEM(t, filepath.Join(dir, "origin.key"), "EC PRIVATE KEY", key)
	writePEM(t, filepath.Join(dir, "pull-ca.pem"), "CERTIFICATE", pullCA.der)

	env := testenv.StackEnv(t)
	env["GUARDIAN_SCHEME"] = "https"
	env["GUARDIAN_TLS_CERT"] = filepath.Join(dir, "origin.pem")
	env["GUARDIAN_TLS_KEY"] = filepath.Join(dir, "origin.key")
	env["GUARDIAN_TLS_CLIENT_CA"] = filepath.Join(dir, "pull-ca.pem")
	roots := x509.NewCertPool()
	roots.AddCert(serverCA.cert)
	client := func(ca *testCA, maxVersion uint16) *http.Client {
		cfg := &tls.Config{RootCAs: roots, ServerName: "localhost", MaxVersion: maxVersion}
		if ca != nil {
			der, k := ca.issue(t, "cloudflare origin pull", true)
			priv, err := x509.ParseECPrivateKey(k)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}}
		}
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	}
	cloudflare := client(pullCA, 0)
	s, err := testenv.TryStartStackWith(t, env, cloudflare)
	if err != nil {
		t.Fatal(err)
	}

	// Cloudflare names the site in SNI and in Host alike (Caddy answers
	// 421 when they differ under client authentication).
	base := strings.Replace(s.URL, "127.0.0.1", "localhost", 1)
	resp, err := cloudflare.Get(base + "/healthz")
	if err != nil {
		t.Fatalf("Cloudflare's pull: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor == 3 || resp.Header.Get("Alt-Svc") != "" || resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 || resp.Header.Get("Strict-Transport-Security") == "" {
		t.Fatalf("%d over %v, headers %v", resp.StatusCode, resp.TLS, resp.Header)
	}
	for name, c := range map[string]*http.Client{
		"no client certificate":             client(nil, 0),
		"a certificate of another CA":       client(strangerCA, 0),
		"Cloudflare's certificate, TLS 1.1": client(pullCA, tls.VersionTLS11),
	} {
		if resp, err := c.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			t.Errorf("%s: answered %d", name, resp.StatusCode)
		}
	}
	// Plain HTTP on the port gets no page, only Go's TLS server's refusal.
	resp, err = http.Get(strings.Replace(base, "https://", "http://", 1) + "/healthz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP: %d", resp.StatusCode)
		}
	}

	bad := testenv.StackEnv(t)
	bad["GUARDIAN_SCHEME"] = "ftp"
	if _, err := testenv.TryStartStack(t, bad); err == nil {
		t.Error("Caddy started with GUARDIAN_SCHEME=ftp")
	}
}

type testCA struct {
	cert *x509.Certificate
	der  []byte
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, der: der, key: key}
}

// issue returns a leaf certificate (DER) for name and its key (SEC 1 DER),
// for a client or a server.
func (ca *testCA) issue(t *testing.T, name string, client bool) ([]byte, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if client {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	} else {
		tmpl.DNSNames, tmpl.IPAddresses = []string{name}, []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	k, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der, k
}

func serial(t *testing.T) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
