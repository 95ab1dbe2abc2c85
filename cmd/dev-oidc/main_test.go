package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestServesDiscoveryAndStopsOnSIGTERM(t *testing.T) {
	bin := testenv.Build(t, "./cmd/dev-oidc")
	port := testenv.FreePort(t)
	issuer := fmt.Sprintf("http://localhost:%d/oidc", port)
	cmd := exec.Command(bin, "-addr", fmt.Sprintf("127.0.0.1:%d", port), "-issuer", issuer,
		"-client-id", "guardian-dev", "-redirect", "http://localhost:8080/auth/google/callback", "-email", "demo@guardian.localhost")
	cmd.Env = append(os.Environ(), "GUARDIAN_OIDC_CLIENT_SECRET=from-the-environment")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
	}()
	var doc map[string]any
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/oidc/.well-known/openid-configuration", port))
		if err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&doc)
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no discovery document: %v\n%s", err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if doc["issuer"] != issuer || doc["authorization_endpoint"] != issuer+"/authorize" {
		t.Fatalf("discovery: %v", doc)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("dev-oidc did not stop")
	}
	if !strings.Contains(out.String(), "demo@guardian.localhost") {
		t.Fatalf("log: %s", out.String())
	}
}

func TestRefusesToStartWithoutAClient(t *testing.T) {
	bin := testenv.Build(t, "./cmd/dev-oidc")
	cmd := exec.Command(bin, "-addr", "127.0.0.1:0", "-redirect", "http://localhost/cb")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "-client-id") {
		t.Fatalf("%v: %s", err, out)
	}
}
