package main

import (
	"bytes"
	"errors"
	"io"
	"sync"

	"github.com/go-json-experiment/json/jsontext"
)

// errFieldType: a snapshot field ingest reads holds neither a string nor
// null, in a body that is otherwise valid JSON.
var errFieldType = errors.New("a snapshot field is not a string")

// fieldOptions give the decoder encoding/json's tolerance: duplicate names
// (the last wins) and invalid UTF-8 (replaced by U+FFFD). Deployed agents
// must keep working, so ingest accepts exactly what it accepted when it
// decoded with encoding/json; FuzzReadFields holds it to that.
var fieldOptions = []jsontext.Options{jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true)}

var decoders = sync.Pool{New: func() any { return new(jsontext.Decoder) }}

// noInput replaces a body in a pooled decoder; it is never read.
var noInput = new(bytes.Reader)

// readFields validates body as one JSON object and reads the members
// ingest uses, in a single pass over the ~4 KB snapshot (encoding/json
// scans it twice: once to validate, once to decode). Names match as
// encoding/json matches struct fields: escapes decoded, case folded.
// The error is errFieldType, or a syntax error, which wins when the body
// has both, as it did with encoding/json.
func readFields(body []byte) (snapshot, error) {
	var s snapshot
	dec := decoders.Get().(*jsontext.Decoder)
	dec.Reset(bytes.NewBuffer(body), fieldOptions...)
	defer func() {
		dec.Reset(noInput) // let go of the body
		decoders.Put(dec)
	}()
	if tok, err := dec.ReadToken(); err != nil {
		return s, err
	} else if tok.Kind() != '{' {
		return s, errors.New("the body is not a JSON object")
	}
	var typeErr error
	var nameBuf [32]byte
	for dec.PeekKind() != '}' {
		name, err := dec.ReadValue() // a quoted name, or the error PeekKind saw
		if err != nil {
			return s, err
		}
		field := s.field(name, nameBuf[:0])
		if field == nil {
			if err := dec.SkipValue(); err != nil {
				return s, err
			}
			continue
		}
		v, err := dec.ReadValue()
		if err != nil {
			return s, err
		}
		switch v.Kind() {
		case '"':
			u, _ := jsontext.AppendUnquote(nil, v) // only invalid UTF-8 can fail here; it is replaced
			str := string(u)
			*field = &str
		case 'n':
			*field = nil
		default:
			typeErr = errFieldType
		}
	}
	if _, err := dec.ReadToken(); err != nil { // the closing brace
		return s, err
	}
	if _, err := dec.ReadToken(); err != io.EOF {
		if err == nil {
			err = errors.New("data after the JSON object")
		}
		return s, err
	}
	return s, typeErr
}

// field is the member of s a quoted JSON name fills, or nil.
func (s *snapshot) field(quoted jsontext.Value, buf []byte) **string {
	name := []byte(quoted[1 : len(quoted)-1])
	if bytes.IndexByte(name, '\\') >= 0 {
		name, _ = jsontext.AppendUnquote(buf, quoted)
	}
	switch {
	case bytes.EqualFold(name, []byte("timestamp")):
		return &s.Timestamp
	case bytes.EqualFold(name, []byte("collector_version")):
		return &s.CollectorVersion
	case bytes.EqualFold(name, []byte("server_id")):
		return &s.ServerID
	}
	return nil
}
