package testenv

import (
	"io"
	"sync"
)

// Reading wraps r so that the channel it returns is closed when the
// first Read begins: a test of a slow or idle upload waits on it to know
// the server is reading the body, instead of sleeping on a guess.
func Reading(r io.Reader) (io.Reader, <-chan struct{}) {
	f := &firstRead{r: r, reading: make(chan struct{})}
	return f, f.reading
}

type firstRead struct {
	r       io.Reader
	reading chan struct{}
	once    sync.Once
}

func (f *firstRead) Read(p []byte) (int, error) {
	f.once.Do(func() { close(f.reading) })
	return f.r.Read(p)
}
