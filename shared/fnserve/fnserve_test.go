package fnserve

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestListenerFromSocketPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fn.sock")
	t.Setenv(EnvListenFD, "")
	t.Setenv(EnvSocket, path)
	ln, err := Listener()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().String() != path {
		t.Fatalf("listening on %s", ln.Addr())
	}
}

func TestListenerRejectsBadDescriptors(t *testing.T) {
	for _, v := range []string{"x", "-1", "0", "2"} {
		t.Setenv(EnvListenFD, v)
		if _, err := Listener(); err == nil {
			t.Errorf("%s=%q accepted", EnvListenFD, v)
		}
	}
	t.Setenv(EnvListenFD, "")
	t.Setenv(EnvSocket, "")
	if _, err := Listener(); err == nil {
		t.Error("no socket configured, yet a listener")
	}
}

func TestServeSignalsReadyAndDrainsOnStop(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	t.Setenv(EnvReadyFD, strconv.Itoa(int(w.Fd())))
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "fn.sock"))
	if err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{})
	h := http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
		close(entered)
		time.Sleep(200 * time.Millisecond)
		_, _ = io.WriteString(rw, "finished")
	})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, ln, h) }()

	var b [1]byte
	if _, err := r.Read(b[:]); err != nil || b[0] != 'R' {
		t.Fatalf("readiness byte: %q, %v", b, err)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", ln.Addr().String())
	}}}
	got := make(chan string, 1)
	go func() {
		resp, err := client.Get("http://fn/")
		if err != nil {
			got <- err.Error()
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		got <- string(body)
	}()
	<-entered
	cancel() // SIGTERM arrives while a request is in flight
	if body := <-got; body != "finished" {
		t.Fatalf("in-flight request got %q", body)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// Settings come over the runtime's socket only after the function says it
// is sealed; they become the environment, never override the runtime's
// own variables, and the socket's variable is gone afterwards.
func TestReadSettings(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	runtime, fn := os.NewFile(uintptr(fds[0]), "runtime"), os.NewFile(uintptr(fds[1]), "function")
	defer runtime.Close()
	t.Setenv(EnvSettingsFD, strconv.Itoa(int(fn.Fd())))
	t.Setenv(EnvName, "real")
	t.Setenv("FNSERVE_TEST_B", "")
	sent := make(chan error, 1)
	go func() {
		var b [1]byte
		if _, err := io.ReadFull(runtime, b[:]); err != nil || b[0] != SealedByte {
			sent <- fmt.Errorf("no sealed byte before the settings: %q %v", b, err)
			runtime.Close()
			return
		}
		_, err := runtime.Write(EncodeSettings([]string{"FNSERVE_TEST_A=x=y z", "FNSERVE_TEST_B=", EnvName + "=forged"}))
		runtime.Close()
		sent <- err
	}()
	if err := readSettings(); err != nil {
		t.Fatal(err)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if got := os.Getenv("FNSERVE_TEST_A"); got != "x=y z" {
		t.Errorf("FNSERVE_TEST_A = %q", got)
	}
	if v, ok := os.LookupEnv("FNSERVE_TEST_B"); !ok || v != "" {
		t.Errorf("FNSERVE_TEST_B = %q %t", v, ok)
	}
	if got := os.Getenv(EnvName); got != "real" {
		t.Errorf("a setting overrode %s: %q", EnvName, got)
	}
	if _, ok := os.LookupEnv(EnvSettingsFD); ok {
		t.Errorf("%s still set", EnvSettingsFD)
	}
}
