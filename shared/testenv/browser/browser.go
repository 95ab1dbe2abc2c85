// Package browser starts Debian's Chromium, headless, for tests of the
// dashboard's real pages (chromedp). It is apart from testenv so that only
// the tests that drive a browser compile and link chromedp.
package browser

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Chromium starts a headless Chromium with a profile of its own for t and
// returns its tab's context, bounded to 90 s; everything stops when t ends.
func Chromium(t testing.TB) context.Context {
	t.Helper()
	path := "/usr/lib/chromium/chromium" // the binary itself: no wrapper warning
	if _, err := os.Stat(path); err != nil {
		path = "/usr/bin/chromium"
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(func() { cancelTimeout(); cancel(); cancelAlloc() })
	return ctx
}
