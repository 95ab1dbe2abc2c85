package main

import (
	"errors"
	"io"
	"net/http"
	"time"
)

// The slowest a CSV export may be read: on average ExportMinRate bytes a
// second from its start, after ExportGrace. write_idle alone cuts only a
// client that stops reading; one that reads a little every few seconds
// would hold one of the export route's few places (and its account's) for
// the export's whole 10 minutes. At 32 KiB/s an export of 19 MB still
// fits in those 10 minutes; one that would not is cut by them anyway.
const (
	ExportMinRate = 32 << 10 // bytes a second
	ExportGrace   = 30 * time.Second
)

// paced is an export's writer. Each write must be done by the time a
// reader at rate bytes a second, starting grace after start, would have
// taken every byte up to its end; a write past that fails, and the export
// ends. Bytes the socket buffers between here and the client take count
// as read: a reader is cut only once those are full.
type paced struct {
	w       io.Writer
	rc      *http.ResponseController
	start   time.Time
	rate    int64
	grace   time.Duration
	written int64
}

func newPaced(w http.ResponseWriter, rate int64, grace time.Duration) *paced {
	return &paced{w: w, rc: http.NewResponseController(w), start: time.Now(), rate: rate, grace: grace}
}

// Write writes b under the deadline its last byte has.
func (p *paced) Write(b []byte) (int, error) {
	end := p.written + int64(len(b))
	due := p.start.Add(p.grace + time.Duration(end/p.rate)*time.Second + time.Duration(end%p.rate)*time.Second/time.Duration(p.rate))
	if err := p.rc.SetWriteDeadline(due); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return 0, err
	}
	n, err := p.w.Write(b)
	p.written += int64(n)
	return n, err
}
