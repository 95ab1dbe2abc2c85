package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/testenv"
)

// answerCutter is a TCP proxy in front of PostgreSQL that, once armed,
// drops the first connection whose server is answering a COPY with
// CommandComplete, before the client reads it. PostgreSQL commits an
// implicit transaction before it sends CommandComplete, so the COPY is
// stored and the client cannot know it: the ambiguous outcome a network
// fault or a crash between commit and answer leaves.
type answerCutter struct {
	ln     net.Listener
	target string
	armed  atomic.Bool
	cut    atomic.Bool
	wg     sync.WaitGroup
}

func newAnswerCutter(t *testing.T, target string) *answerCutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &answerCutter{ln: ln, target: target}
	p.armed.Store(true)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() { _ = ln.Close(); p.wg.Wait() })
	return p
}

func (p *answerCutter) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.wg.Add(2)
		go func() { // client to server: bytes as they come
			defer p.wg.Done()
			_, _ = io.Copy(server, client)
			_ = server.Close()
		}()
		go func() { // server to client: message by message
			defer p.wg.Done()
			defer client.Close()
			defer server.Close()
			p.forward(client, server)
		}()
	}
}

// forward copies the server's messages (type byte, int32 length that
// counts itself, body) to the client until it should cut.
func (p *answerCutter) forward(client io.Writer, server io.Reader) {
	r := bufio.NewReader(server)
	head := make([]byte, 5)
	for {
		if _, err := io.ReadFull(r, head); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(head[1:])) - 4
		if n < 0 {
			return
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		if head[0] == 'C' && bytes.HasPrefix(body, []byte("COPY ")) && p.armed.CompareAndSwap(true, false) {
			p.cut.Store(true)
			return
		}
		if _, err := client.Write(append(head, body...)); err != nil {
			return
		}
	}
}

func TestACommitWhoseAnswerIsLostIsNeitherLostNorDoubled(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	u, err := url.Parse(pg.AppDSN)
	if err != nil {
		t.Fatal(err)
	}
	cutter := newAnswerCutter(t, u.Host)
	u.Host = cutter.ln.Addr().String()
	w := newWriter(t, u.String(), 64<<20)

	// Enough rows at once that the chain writes batches (COPY), not only
	// lone rows (INSERT).
	const n = 400
	recordAtOnce(t, w, n)
	if !cutter.cut.Load() {
		t.Fatal("no COPY answer was cut: the rows never formed a batch")
	}
	// The batch whose answer was lost went to the spool (it is durable
	// there, so its requests were answered) with the same chain positions;
	// the replay finds those positions stored and skips them, so the chain
	// goes on whole.
	deadline := time.Now().Add(30 * time.Second)
	for !w.spool.empty() || w.spool.isSpooling() {
		if time.Now().After(deadline) {
			t.Fatal("spool never drained")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var rows, ids int64
	err = pg.Owner.QueryRow(context.Background(),
		"SELECT count(*), count(DISTINCT request_id) FROM api_audit_log").Scan(&rows, &ids)
	if err != nil {
		t.Fatal(err)
	}
	if rows != n || ids != n {
		t.Fatalf("%d rows with %d request ids, want exactly %d of each", rows, ids, n)
	}
	rep, err := audit.Verify(context.Background(), pg.Owner)
	if err != nil || !rep.OK() || rep.Rows != n {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}
