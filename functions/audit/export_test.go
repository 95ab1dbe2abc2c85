package main

import (
	"context"
	"encoding/csv"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/testenv"
)

// slowGet gets url with a small receive buffer, so that the edge's
// writes wait for the reader, and reads the body after stall, pausing
// between reads. It returns the status and what was read, and the error
// that ended the body (nil: the body is whole).
func slowGet(t *testing.T, url string, header map[string]string, stall, pause time.Duration) (int, []byte, error) {
	t.Helper()
	dialer := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		_ = c.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10) })
		return err
	}}
	client := &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext, DisableCompression: true}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	time.Sleep(stall)
	var body []byte
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		body = append(body, buf[:n]...)
		if err == io.EOF {
			return resp.StatusCode, body, nil
		}
		if err != nil {
			return resp.StatusCode, body, err
		}
		time.Sleep(pause)
	}
}

// wideRows stores n read rows of ~2.6 KB for customer: 10,000 make ~26
// MB, several times what loopback's socket buffers hold, so the edge's
// writes of an export wait for its reader.
func wideRows(t *testing.T, pg *testenv.PG, customer string, n int) {
	t.Helper()
	if _, err := pg.Owner.Exec(context.Background(), `INSERT INTO api_audit_log (customer_id, request_id, method, path, user_agent, action, result, status_code)
		SELECT $1, 'wide-' || g, 'GET', '/' || repeat('p', 2000), repeat('u', 500), 'read', 'success', 200 FROM generate_series(1, $2::int) g`, customer, n); err != nil {
		t.Fatal(err)
	}
}

// An export that takes longer than the server's old hard write bound
// (scaled down here: several seconds against write_idle's 2 s) reaches a
// client that keeps reading, whole: the server's `write` is only a
// ceiling above the export's own timeout, and write_idle counts from the
// answer's last progress. A client that stops reading is still cut, by
// write_idle.
func TestASlowlyReadExportArrivesWhole(t *testing.T) {
	t.Parallel()
	env, c, pg := testenv.EdgeEnv(t)
	env["GUARDIAN_WRITE_IDLE_TIMEOUT"] = "2s"
	const rows = 10000
	wideRows(t, pg, c.ID, rows)
	stack := testenv.StartStack(t, env)
	admin := bearer(c.AccountKey(t, "admin"))
	url := stack.URL + "/api/v1/audit?format=csv&action=read"

	start := time.Now()
	// ~800 reads of at most 32 KiB, 8 ms apart: over 6 s, three times
	// write_idle, whatever the machine's speed.
	status, body, err := slowGet(t, url, admin, 0, 8*time.Millisecond)
	took := time.Since(start)
	if err != nil || status != 200 {
		t.Fatalf("a reading client: %d, %d bytes in %s: %v", status, len(body), took, err)
	}
	recs, err := csv.NewReader(strings.NewReader(string(body))).ReadAll()
	if err != nil || len(recs) != 1+rows || recs[len(recs)-1][0] == "truncated" || recs[len(recs)-1][0] == "error" {
		t.Fatalf("%d records in %d bytes (%v), want the header and %d rows", len(recs), len(body), err, rows)
	}
	if took < 4*time.Second {
		t.Fatalf("the export took %s, not much over write_idle's 2 s: the test's premise failed", took)
	}

	if status, body, err := slowGet(t, url, admin, 6*time.Second, 0); err == nil {
		t.Fatalf("a client that stopped reading for 6 s: %d, the whole file (%d bytes)", status, len(body))
	}
}

// A client that keeps reading, but more slowly than the export's floor,
// is cut once the socket buffers are full and its average falls behind:
// it does not hold one of the export's places for the whole 10 minutes.
// At the same floor, a client reading at loopback's speed gets the file.
func TestAnExportReadBelowTheFloorIsCut(t *testing.T) {
	t.Parallel()
	env, c, pg := testenv.EdgeEnv(t)
	// A floor a client reading at full speed clears many times over, even
	// on a machine busy with other tests.
	env["GUARDIAN_AUDIT_EXPORT_MIN_RATE"] = strconv.Itoa(512 << 10)
	env["GUARDIAN_AUDIT_EXPORT_GRACE"] = "1s"
	const rows = 10000
	wideRows(t, pg, c.ID, rows)
	stack := testenv.StartStack(t, env)
	admin := bearer(c.AccountKey(t, "admin"))
	url := stack.URL + "/api/v1/audit?format=csv&action=read"

	status, body, err := slowGet(t, url, admin, 0, 0)
	if err != nil || status != 200 {
		t.Fatalf("a fast client: %d, %d bytes: %v", status, len(body), err)
	}
	if recs, err := csv.NewReader(strings.NewReader(string(body))).ReadAll(); err != nil || len(recs) != 1+rows {
		t.Fatalf("a fast client: %d records (%v), want the header and %d rows", len(recs), err, rows)
	}

	// Reads of at most 32 KiB (the receive buffer, which the kernel
	// doubles), 100 ms apart: under 330 KB/s, so the whole file would take
	// some 80 s, past slowGet's minute. The floor cuts it once the buffers
	// between are full.
	status, body, err = slowGet(t, url, admin, 0, 100*time.Millisecond)
	if err == nil || errors.Is(err, context.DeadlineExceeded) || status != 200 {
		t.Fatalf("a client under the floor: %d, %d bytes: %v", status, len(body), err)
	}
	if len(body) >= 20<<20 {
		t.Fatalf("a client under the floor read %d bytes before the cut", len(body))
	}
}
