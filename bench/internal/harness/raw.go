package harness

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// RawClient sends HTTP/1.1 requests over keep-alive connections to one
// address, each request written with a single write and its answer read
// by the calling goroutine. It is a load generator for benchmarks that
// share the machine with what they measure: net/http's client hands every
// request to two goroutines per connection and back, which here cost as
// much CPU per ingest request as ClickHouse and PostgreSQL together. The
// bytes on the wire are a plain HTTP/1.1 request, as any client sends.
type RawClient struct {
	addr    string
	timeout time.Duration
	mu      sync.Mutex
	idle    []*rawConn
}

type rawConn struct {
	c   net.Conn
	br  *bufio.Reader
	buf []byte
}

// NewRawClient returns a client for addr (host:port); every exchange is
// bounded by timeout.
func NewRawClient(addr string, timeout time.Duration) *RawClient {
	return &RawClient{addr: addr, timeout: timeout}
}

// Post sends POST path with the headers (each "Name: value") and body,
// reads the whole answer and returns its status.
func (rc *RawClient) Post(ctx context.Context, path string, headers []string, body []byte) (int, error) {
	c, err := rc.get(ctx)
	if err != nil {
		return 0, err
	}
	b := c.buf[:0]
	b = append(b, "POST "...)
	b = append(b, path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, rc.addr...)
	b = append(b, "\r\n"...)
	for _, h := range headers {
		b = append(b, h...)
		b = append(b, "\r\n"...)
	}
	b = append(b, "Content-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)
	c.buf = b
	_ = c.c.SetDeadline(time.Now().Add(rc.timeout))
	if _, err := c.c.Write(b); err != nil {
		c.c.Close()
		return 0, fmt.Errorf("sending: %w", err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.c.Close()
		return 0, fmt.Errorf("reading the answer: %w", err)
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || resp.Close {
		c.c.Close()
	} else {
		rc.put(c)
	}
	return resp.StatusCode, err
}

func (rc *RawClient) get(ctx context.Context) (*rawConn, error) {
	rc.mu.Lock()
	if n := len(rc.idle); n > 0 {
		c := rc.idle[n-1]
		rc.idle = rc.idle[:n-1]
		rc.mu.Unlock()
		return c, nil
	}
	rc.mu.Unlock()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", rc.addr)
	if err != nil {
		return nil, err
	}
	return &rawConn{c: c, br: bufio.NewReaderSize(c, 4096), buf: make([]byte, 0, 8192)}, nil
}

func (rc *RawClient) put(c *rawConn) {
	rc.mu.Lock()
	rc.idle = append(rc.idle, c)
	rc.mu.Unlock()
}

// Close closes the idle connections.
func (rc *RawClient) Close() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, c := range rc.idle {
		c.c.Close()
	}
	rc.idle = nil
}
