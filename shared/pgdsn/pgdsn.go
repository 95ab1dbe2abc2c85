// Package pgdsn parses a PostgreSQL connection string as pgx does, without
// ever quoting it: the string holds a password.
//
// pgx's parse errors quote the string, so they are replaced by one naming
// the variable it came from. And a URL whose password holds a '/' (which
// a URL must percent-encode, and which openssl rand -base64 gives one
// password in fifty) parses without error, wrongly: the URL's authority
// ends at the '/', and the rest of the password becomes the database's
// name, which every connect error of pgx then prints. Such a string is
// refused, since no database Guardian uses has an '@' in its name.
package pgdsn

import (
	"errors"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Conn parses dsn for one connection; name is the variable it came from.
func Conn(name, dsn string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, invalid(name)
	}
	if err := check(name, cfg.Database); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Pool parses dsn for a pool; name is the variable it came from.
func Pool(name, dsn string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, invalid(name)
	}
	if err := check(name, cfg.ConnConfig.Database); err != nil {
		return nil, err
	}
	return cfg, nil
}

func invalid(name string) error {
	return errors.New(name + " is not a valid PostgreSQL connection string")
}

func check(name, database string) error {
	if strings.ContainsAny(database, "@/") {
		return errors.New(name + " names a database with '@' or '/' in it, which a URL whose password holds a character it must percent-encode reads so ('/' as %2F, '@' as %40, '?' as %3F, '#' as %23): encode the password, or use the key=value form")
	}
	return nil
}
