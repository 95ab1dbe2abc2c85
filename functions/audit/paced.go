package main

import (
	"errors"
	"io"
	"net/http"
	"time"
)

// The slowest a CSV export may be read: ExportMinRate bytes a second, on
// average over the time the export waits for its reader, past ExportGrace
// of such waiting. write_idle alone cuts only a client that stops
// reading; one that reads a little every few seconds would hold one of
// the export route's few places (and its account's) for the export's
// whole 10 minutes. At 32 KiB/s an export of 19 MB still fits in those
// 10 minutes; one that would not is cut by them anyway.
const (
	ExportMinRate = 32 << 10 // bytes a second
	ExportGrace   = 30 * time.Second
)

// paced is an export's writer. Only the time its writes wait counts
// against the reader, not the time the export spends reading the log
// between them (a filter the index does not serve can read slowly): each
// write must be done before the waits so far exceed grace plus the time a
// reader at rate bytes a second would take for every byte up to the
// write's end. A write past that fails, and the export ends. Bytes the
// socket buffers between here and the client take count as read, so a
// reader is cut only once those are full. A rate of 0 paces nothing.
type paced struct {
	w       io.Writer
	rc      *http.ResponseController
	rate    int64
	grace   time.Duration
	written int64
	waited  time.Duration // time spent in Write so far
	now     func() time.Time
}

func newPaced(w http.ResponseWriter, rate int64, grace time.Duration) *paced {
	return &paced{w: w, rc: http.NewResponseController(w), rate: rate, grace: grace, now: time.Now}
}

// Write writes b under the deadline its last byte has.
func (p *paced) Write(b []byte) (int, error) {
	if p.rate <= 0 {
		return p.w.Write(b)
	}
	start := p.now()
	end := p.written + int64(len(b))
	allowed := p.grace + time.Duration(end/p.rate)*time.Second + time.Duration(end%p.rate)*time.Second/time.Duration(p.rate)
	if err := p.rc.SetWriteDeadline(start.Add(allowed - p.waited)); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return 0, err
	}
	n, err := p.w.Write(b)
	p.written += int64(n)
	p.waited += p.now().Sub(start)
	return n, err
}
