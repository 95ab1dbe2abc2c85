package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"math/big"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// maxSignatureLen bounds the signature header: a DER ECDSA P-256
// signature is at most 72 bytes, 96 characters of base64.
const maxSignatureLen = 96

// Signature errors; clients get one 401 for all of them.
var (
	errSigEncoding = errors.New("signature: not standard padded base64")
	errSigDER      = errors.New("signature: not a DER ECDSA signature")
	errSigInvalid  = errors.New("signature: does not verify")
)

// parseSignature decodes GitHub's Github-Public-Key-Signature: standard
// base64 (padded; the URL alphabet is refused) of an ASN.1 DER
// SEQUENCE { INTEGER r, INTEGER s } with minimal, positive integers and
// nothing after it. A raw 64-byte r||s signature is refused.
func parseSignature(header string) (r, s *big.Int, err error) {
	if header == "" || len(header) > maxSignatureLen {
		return nil, nil, errSigEncoding
	}
	der, err := base64.StdEncoding.Strict().DecodeString(header)
	if err != nil {
		return nil, nil, errSigEncoding
	}
	var seq cryptobyte.String
	in := cryptobyte.String(der)
	r, s = new(big.Int), new(big.Int)
	if !in.ReadASN1(&seq, asn1.SEQUENCE) || !in.Empty() ||
		!seq.ReadASN1Integer(r) || !seq.ReadASN1Integer(s) || !seq.Empty() {
		return nil, nil, errSigDER
	}
	if r.Sign() <= 0 || s.Sign() <= 0 {
		return nil, nil, errSigDER
	}
	n := elliptic.P256().Params().N
	if r.Cmp(n) >= 0 || s.Cmp(n) >= 0 {
		return nil, nil, errSigDER
	}
	return r, s, nil
}

// verifySignature checks header as GitHub's signature of body under pub:
// ECDSA P-256 over SHA-256 of the raw bytes.
func verifySignature(pub *ecdsa.PublicKey, body []byte, header string) error {
	r, s, err := parseSignature(header)
	if err != nil {
		return err
	}
	digest := sha256.Sum256(body)
	if !ecdsa.Verify(pub, digest[:], r, s) {
		return errSigInvalid
	}
	return nil
}
