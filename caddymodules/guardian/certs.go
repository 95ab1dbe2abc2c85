package guardian

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// certExpiry is when the certificates the site serves and trusts end: the
// origin certificate Cloudflare's "Full (strict)" checks, and the CA of
// the client certificate it presents. Either one expired stops all
// traffic, and Caddy renews neither (they are files, not ACME's).
var certExpiry = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Namespace: "guardian", Subsystem: "tls", Name: "certificate_expiry_timestamp_seconds",
	Help: "When the certificate ends (Unix seconds): origin (GUARDIAN_TLS_CERT, its first certificate) and client_ca (GUARDIAN_TLS_CLIENT_CA, the earliest of its certificates).",
}, []string{"cert"})

// noteCertExpiry sets certExpiry from the files lookup names, where the
// site serves HTTPS. A file that cannot be read or parsed is logged and
// left out: the tls directive refuses it with its own error.
func noteCertExpiry(lookup func(string) (string, bool), log *zap.Logger) {
	if scheme, _ := lookup("GUARDIAN_SCHEME"); scheme != "https" {
		certExpiry.Reset() // a reload to plain HTTP leaves no certificate to watch
		return
	}
	for label, env := range map[string]string{"origin": "GUARDIAN_TLS_CERT", "client_ca": "GUARDIAN_TLS_CLIENT_CA"} {
		path, _ := lookup(env)
		end, err := earliestEnd(path, label == "origin")
		if err != nil {
			log.Warn("certificate expiry not exported", zap.String("cert", label), zap.String("setting", env), zap.Error(err))
			certExpiry.DeleteLabelValues(label)
			continue
		}
		certExpiry.WithLabelValues(label).Set(float64(end))
	}
}

// earliestEnd reads the PEM certificates of path and returns when the
// first ends (first only) or the earliest of them ends (Unix seconds).
func earliestEnd(path string, first bool) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var end int64
	found := false
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", path, err)
		}
		if t := c.NotAfter.Unix(); !found || t < end {
			end, found = t, true
		}
		if first {
			break
		}
	}
	if !found {
		return 0, fmt.Errorf("%s: no certificate", path)
	}
	return end, nil
}
