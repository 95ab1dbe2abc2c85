package fnserve

import (
	"net"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// parentOnly accepts connections from one process only: the runtime (Caddy)
// that started the function. Functions run as one user and their sockets
// sit in one directory, so without this any of them, once compromised,
// could connect to another and send it identity headers of its choosing,
// acting with that function's database grants. The kernel reports the
// connecting process (SO_PEERCRED); a process of the same user cannot
// borrow Caddy's connections, as Caddy is not dumpable (shared/nodump).
type parentOnly struct {
	net.Listener
	parent   int
	log      *zap.Logger
	refused  atomic.Int64
	lastWarn atomic.Int64
}

func (p *parentOnly) Accept() (net.Conn, error) {
	for {
		c, err := p.Listener.Accept()
		if err != nil {
			return nil, err
		}
		pid, ok := peerPID(c)
		if ok && pid == p.parent {
			return c, nil
		}
		_ = c.Close()
		p.refused.Add(1)
		now := time.Now().UnixNano()
		if last := p.lastWarn.Load(); now-last >= int64(time.Minute) && p.lastWarn.CompareAndSwap(last, now) {
			p.log.Warn("refused a connection from a process other than the runtime",
				zap.Int("peer_pid", pid), zap.Int64("refused_so_far", p.refused.Load()))
		}
	}
}

// peerPID is the pid of the process that connected c (0, false if the
// kernel cannot say, as for a connection that is not a unix socket).
func peerPID(c net.Conn) (int, bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return 0, false
	}
	return int(cred.Pid), true
}
