package fnserve

import (
	"net"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/glassmkr/guardian/shared/logevery"
)

// parentOnly accepts connections from one process only: the runtime (Caddy)
// that started the function. Function sockets are abstract, which any
// process of the host may connect to, so without this another process
// could send a function identity headers of its choosing, acting with
// that function's database grants. The kernel reports the connecting
// process (SO_PEERCRED); a process of the same user cannot borrow Caddy's
// connections, as Caddy is not dumpable (shared/nodump).
type parentOnly struct {
	net.Listener
	parent   int
	log      *zap.Logger
	refused  atomic.Int64
	warnings logevery.Gate // one line a minute, however many are refused
}

func (p *parentOnly) Accept() (net.Conn, error) {
	for {
		c, err := p.Listener.Accept()
		if err != nil {
			return nil, err
		}
		pid, _, ok := PeerCred(c)
		if ok && pid == p.parent {
			return c, nil
		}
		_ = c.Close()
		p.refused.Add(1)
		if _, ok := p.warnings.Allow(time.Now(), time.Minute); ok {
			p.log.Warn("refused a connection from a process other than the runtime",
				zap.Int("peer_pid", pid), zap.Int64("refused_so_far", p.refused.Load()))
		}
	}
}

// PeerCred is the pid and uid of the process at c's other end (for the
// side that connected, of the process that listened), or false if the
// kernel cannot say, as for a connection that is not a unix socket.
func PeerCred(c net.Conn) (pid, uid int, ok bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, 0, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return 0, 0, false
	}
	return int(cred.Pid), int(cred.Uid), true
}
