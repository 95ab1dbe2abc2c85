package chbackup

import (
	"context"
	"io"

	"github.com/pkg/sftp"
)

// Session is an SFTP session with one target under the same rules as the
// ClickHouse backup's own (key file, host key pinned in known_hosts, no
// trust on first use), for other backups that ship files to the backup
// host: shared/pgbackup mirrors pgBackRest's repository with it.
type Session struct{ r *remote }

// DialSession connects to t with the private key in keyFile and the host
// keys knownHostsFile pins. Cancelling ctx closes the session.
func DialSession(ctx context.Context, keyFile, knownHostsFile string, t Target) (*Session, error) {
	auth, err := loadSSHAuth(Config{SSHKeyFile: keyFile, KnownHostsFile: knownHostsFile})
	if err != nil {
		return nil, err
	}
	r, err := dial(ctx, auth, t)
	if err != nil {
		return nil, err
	}
	return &Session{r: r}, nil
}

// Client is the SFTP client, for listing and removing.
func (s *Session) Client() *sftp.Client { return s.r.c }

// Root is the target's directory.
func (s *Session) Root() string { return s.r.target.Path }

// Put streams src to name: written under a temporary name beside it,
// synced when the server can, then renamed over name, so name is never
// half-written. Temporary names start with TempPrefix.
func (s *Session) Put(name string, src io.Reader) (int64, error) { return s.r.put(name, src) }

// TempPrefix starts the names of files being written by Put; what an
// interrupted run left under such a name may be removed.
const TempPrefix = tmpPrefix

// Close ends the session.
func (s *Session) Close() error { return s.r.Close() }
