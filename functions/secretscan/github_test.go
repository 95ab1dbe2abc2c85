package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
)

// The known-answer vector: a P-256 key pair generated once for these
// tests, and a signature made once with it over katPayload. ECDSA
// signatures are randomised, so the vector is checked by verification.
const (
	katKeyID     = "5baf04d05397f251beff2e785004ea105b4a28405f1af9ca96a575aa9dabbcf1"
	katPublicKey = `-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEU2itAkg4onsyQRU6+v2ALn+96SrC
LRgeooz5s23DAtis0kYxz8pLpPul+eKCBVekaYrDbFI7RFJWkZJq6p6zeA==
-----END PUBLIC KEY-----
`
	katPrivateKey = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg6oD2z6n2WZubS/8j
QQ02DkeCnOzcQ+RoljSLFM0F5XuhRANCAARTaK0CSDiiezJBFTr6/YAuf73pKsIt
GB6ijPmzbcMC2KzSRjHPykuk+6X54oIFV6RpisNsUjtEUlaRkmrqnrN4
-----END PRIVATE KEY-----
`
	katPayload   = `[{"token":"gmk_acct_live_0000000000000000000000000000000000000000001_XXXX","type":"guardian_account_key","url":"https://github.com/octo/repo/blob/abc/.env","source":"content"}]`
	katSignature = "MEQCIDqh7eS5JoxSfTumIdpPAC3OcjW3oK1dqLraAsu7NyvhAiB8dxUmtUjZzEaahsLFM9tqBBXXT5Cdpk+n19zT4wK+tQ=="
)

// GitHub's own published example (docs, "secret scanning partner
// program"): its key, payload and signature, for interoperability.
const (
	ghExampleKey = `-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9MJJHnMfn2+H4xL4YaPDA4RpJqUq
kCmRCBnYERxZanmcpzQSXs1X/AljlKkbJ8qpVIW4clayyef9gWhFbNHWAA==
-----END PUBLIC KEY-----
`
	ghExamplePayload   = `[{"token":"some_token","type":"some_type","url":"some_url"}]`
	ghExampleSignature = "MEUCIQDKZokqnCjrRtw0tni+2Ltvl/uiMJ1EGumEsp1BsNr32AIgQY1YXD2nlj+XNfGK4rBfkMJ1JDOQcYXxa2sY8FNkrKc="
)

func katKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	block, _ := pem.Decode([]byte(katPrivateKey))
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

// fakeGitHub stands in for api.github.com's key document, with keys the
// test holds the private halves of.
type fakeGitHub struct {
	*httptest.Server
	hits atomic.Int64

	mu   sync.Mutex
	keys map[string]*ecdsa.PrivateKey
	fail bool          // answer 500
	hold chan struct{} // the next document, once read, waits for it to close
}

// holdNext makes the next key document wait, after it is read, until the
// returned function is called.
func (g *fakeGitHub) holdNext() func() {
	c := make(chan struct{})
	g.mu.Lock()
	g.hold = c
	g.mu.Unlock()
	return func() { close(c) }
}

func newFakeGitHub(t testing.TB) *fakeGitHub {
	g := &fakeGitHub{keys: map[string]*ecdsa.PrivateKey{katKeyID: katKey(t)}}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		hold := g.hold
		g.hold = nil
		if g.fail || r.URL.Path != "/meta/public_keys/secret_scanning" {
			g.mu.Unlock()
			g.hits.Add(1)
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		type entry struct {
			ID      string `json:"key_identifier"`
			Key     string `json:"key"`
			Current bool   `json:"is_current"`
		}
		doc := struct {
			Keys []entry `json:"public_keys"`
		}{}
		for id, k := range g.keys {
			der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
			doc.Keys = append(doc.Keys, entry{id, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), true})
		}
		g.mu.Unlock()
		g.hits.Add(1)
		if hold != nil {
			<-hold
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(doc)
	}))
	t.Cleanup(g.Close)
	return g
}

// KeysURL is the document's address.
func (g *fakeGitHub) KeysURL() string { return g.URL + "/meta/public_keys/secret_scanning" }

// rotate publishes a new key and returns its identifier.
func (g *fakeGitHub) rotate(t testing.TB) string {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	sum := sha256.Sum256(der)
	id := hex.EncodeToString(sum[:])
	g.mu.Lock()
	g.keys[id] = k
	g.mu.Unlock()
	return id
}

func (g *fakeGitHub) setFail(fail bool) {
	g.mu.Lock()
	g.fail = fail
	g.mu.Unlock()
}

// sign returns GitHub's headers for body, signed with key id.
func (g *fakeGitHub) sign(t testing.TB, id string, body []byte) map[string]string {
	t.Helper()
	g.mu.Lock()
	k := g.keys[id]
	g.mu.Unlock()
	if k == nil {
		k = katKey(t)
	}
	digest := sha256.Sum256(body)
	sig, err := ecdsa.SignASN1(rand.Reader, k, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{HeaderKeyID: id, HeaderSignature: base64.StdEncoding.EncodeToString(sig)}
}
