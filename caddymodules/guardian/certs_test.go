package guardian

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
)

func pemCert(t *testing.T, notAfter time.Time) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "t"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// The origin certificate's end (its first certificate: the chain's CAs
// outlive it) and the client CA file's earliest end are exported; over
// plain HTTP nothing is.
func TestCertificateExpiryIsExported(t *testing.T) {
	dir := t.TempDir()
	leafEnd := time.Now().Add(30 * 24 * time.Hour).Truncate(time.Second)
	caEarly := time.Now().Add(10 * 24 * time.Hour).Truncate(time.Second)
	origin := filepath.Join(dir, "origin.pem")
	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(origin, append(pemCert(t, leafEnd), pemCert(t, leafEnd.Add(-20*24*time.Hour))...), 0o600)
	os.WriteFile(ca, append(pemCert(t, caEarly.Add(100*24*time.Hour)), pemCert(t, caEarly)...), 0o600)
	env := map[string]string{"GUARDIAN_SCHEME": "https", "GUARDIAN_TLS_CERT": origin, "GUARDIAN_TLS_CLIENT_CA": ca}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	certExpiry.Reset()
	noteCertExpiry(lookup, zap.NewNop())
	if got := testutil.ToFloat64(certExpiry.WithLabelValues("origin")); got != float64(leafEnd.Unix()) {
		t.Errorf("origin: %v, want the first certificate's end %d", got, leafEnd.Unix())
	}
	if got := testutil.ToFloat64(certExpiry.WithLabelValues("client_ca")); got != float64(caEarly.Unix()) {
		t.Errorf("client_ca: %v, want the earliest end %d", got, caEarly.Unix())
	}
	// A file that cannot be read is left out, not exported as 0.
	env["GUARDIAN_TLS_CLIENT_CA"] = filepath.Join(dir, "missing.pem")
	certExpiry.Reset()
	noteCertExpiry(lookup, zap.NewNop())
	if n := testutil.CollectAndCount(certExpiry); n != 1 {
		t.Errorf("%d series with the CA file missing, want the origin's alone", n)
	}
	// A reload to plain HTTP leaves none of the series it had.
	env["GUARDIAN_SCHEME"] = "http"
	noteCertExpiry(lookup, zap.NewNop())
	if n := testutil.CollectAndCount(certExpiry); n != 0 {
		t.Errorf("%d series over plain HTTP, want none", n)
	}
}
