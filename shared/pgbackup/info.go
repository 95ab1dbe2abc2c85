package pgbackup

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"time"
)

// Status is pgBackRest's status of a stanza or a repository: code 0 is
// "ok"; 1 missing stanza path, 2 no valid backups, 3 missing stanza data,
// 4 different across repositories, 5 database mismatch, 99 other.
type Status struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// OK reports code 0.
func (s Status) OK() bool { return s.Code == 0 }

// RepoStatus is one repository's status in Info.
type RepoStatus struct {
	Repo   int    `json:"repo"`
	Cipher string `json:"cipher"`
	Status Status `json:"status"`
}

// BackupInfo describes one backup set in a repository.
type BackupInfo struct {
	Repo  int    `json:"repo"`
	Label string `json:"label"`
	// Type is "full", "diff" or "incr".
	Type string `json:"type"`
	// Prior is the backup a diff or incr depends on.
	Prior string    `json:"prior,omitempty"`
	Start time.Time `json:"start"`
	Stop  time.Time `json:"stop"`
	// Size is the database's size; Delta the part of it this backup copied.
	Size  int64 `json:"size_bytes"`
	Delta int64 `json:"delta_bytes"`
	// RepoSize is the stored (compressed, encrypted) size of the whole set;
	// RepoDelta what this backup added to the repository.
	RepoSize  int64  `json:"repo_size_bytes"`
	RepoDelta int64  `json:"repo_delta_bytes"`
	WALStart  string `json:"wal_start"`
	WALStop   string `json:"wal_stop"`
	// Error is set when pgBackRest found page checksum errors while copying.
	Error bool `json:"error,omitempty"`
}

// StanzaInfo is `pgbackrest info` for the stanza.
type StanzaInfo struct {
	Stanza string       `json:"stanza"`
	Status Status       `json:"status"`
	Repos  []RepoStatus `json:"repos"`
	// Backups are oldest first.
	Backups []BackupInfo `json:"backups"`
}

// Latest returns the newest backup in repository repo.
func (i StanzaInfo) Latest(repo int) (BackupInfo, bool) {
	for j := len(i.Backups) - 1; j >= 0; j-- {
		if i.Backups[j].Repo == repo {
			return i.Backups[j], true
		}
	}
	return BackupInfo{}, false
}

// HasFull reports whether repository repo holds a full backup.
func (i StanzaInfo) HasFull(repo int) bool {
	for _, b := range i.Backups {
		if b.Repo == repo && b.Type == "full" {
			return true
		}
	}
	return false
}

// NewestFull returns the newest full backup in repository repo.
func (i StanzaInfo) NewestFull(repo int) (BackupInfo, bool) {
	for j := len(i.Backups) - 1; j >= 0; j-- {
		if b := i.Backups[j]; b.Repo == repo && b.Type == Full {
			return b, true
		}
	}
	return BackupInfo{}, false
}

// RepoStatus returns repository repo's status (code 99 when absent).
func (i StanzaInfo) RepoStatus(repo int) Status {
	for _, r := range i.Repos {
		if r.Repo == repo {
			return r.Status
		}
	}
	return Status{Code: 99, Message: "repository not in info"}
}

// Info runs `pgbackrest info --output=json` over every configured
// repository.
func Info(ctx context.Context, cfg Config) (StanzaInfo, error) {
	r, err := newRunner(cfg)
	if err != nil {
		return StanzaInfo{}, err
	}
	return r.info(ctx, 0)
}

// RepoInfo runs `pgbackrest info --output=json` over repository repo
// alone.
func RepoInfo(ctx context.Context, cfg Config, repo int) (StanzaInfo, error) {
	r, err := newRunner(cfg)
	if err != nil {
		return StanzaInfo{}, err
	}
	return r.info(ctx, repo)
}

// info reads the stanza's info, of one repository when repo > 0.
func (r *runner) info(ctx context.Context, repo int) (StanzaInfo, error) {
	opts := []string{"--output=json"}
	if repo > 0 {
		opts = append(opts, "--repo="+strconv.Itoa(repo))
	}
	out, err := r.pgbackrest(ctx, shortTimeout, "info", opts...)
	if err != nil {
		return StanzaInfo{}, err
	}
	return parseInfo(out, r.cfg.Stanza)
}

type rawInfo struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Repo   []struct {
		Key    int    `json:"key"`
		Cipher string `json:"cipher"`
		Status Status `json:"status"`
	} `json:"repo"`
	Backup []struct {
		Label    string `json:"label"`
		Type     string `json:"type"`
		Prior    string `json:"prior"`
		Error    bool   `json:"error"`
		Database struct {
			RepoKey int `json:"repo-key"`
		} `json:"database"`
		Archive struct {
			Start string `json:"start"`
			Stop  string `json:"stop"`
		} `json:"archive"`
		Info struct {
			Size       int64 `json:"size"`
			Delta      int64 `json:"delta"`
			Repository struct {
				Size  int64 `json:"size"`
				Delta int64 `json:"delta"`
			} `json:"repository"`
		} `json:"info"`
		Timestamp struct {
			Start int64 `json:"start"`
			Stop  int64 `json:"stop"`
		} `json:"timestamp"`
	} `json:"backup"`
}

func parseInfo(out, stanza string) (StanzaInfo, error) {
	var raw []rawInfo
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		return StanzaInfo{}, fmt.Errorf("pgbackup: pgbackrest info: unexpected output: %w", err)
	}
	for _, s := range raw {
		if s.Name != stanza {
			continue
		}
		info := StanzaInfo{Stanza: s.Name, Status: s.Status}
		for _, r := range s.Repo {
			info.Repos = append(info.Repos, RepoStatus{Repo: r.Key, Cipher: r.Cipher, Status: r.Status})
		}
		for _, b := range s.Backup {
			info.Backups = append(info.Backups, BackupInfo{
				Repo: b.Database.RepoKey, Label: b.Label, Type: b.Type, Prior: b.Prior, Error: b.Error,
				Start: time.Unix(b.Timestamp.Start, 0).UTC(), Stop: time.Unix(b.Timestamp.Stop, 0).UTC(),
				Size: b.Info.Size, Delta: b.Info.Delta,
				RepoSize: b.Info.Repository.Size, RepoDelta: b.Info.Repository.Delta,
				WALStart: b.Archive.Start, WALStop: b.Archive.Stop,
			})
		}
		sort.SliceStable(info.Backups, func(a, b int) bool { return info.Backups[a].Stop.Before(info.Backups[b].Stop) })
		return info, nil
	}
	return StanzaInfo{}, fmt.Errorf("pgbackup: pgbackrest info has no stanza %q", stanza)
}
