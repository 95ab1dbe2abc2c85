// Package reqbody reads the small JSON object bodies of API requests the
// same way in every function: the media type checked, the size bounded,
// one object and nothing after it, unknown fields refused, and every
// refusal a problem+json that says what to fix.
package reqbody

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/glassmkr/guardian/shared/problem"
)

// JSON decodes r's body, at most limit bytes, into v (a pointer to a
// struct); an empty body is {}. On failure it has answered (415, 413 or
// 400) and returns false.
func JSON(w http.ResponseWriter, r *http.Request, limit int64, v any) bool {
	return answered(w, Parse(w, r, limit, v))
}

// Parse is JSON that returns its refusal instead of answering it, for a
// handler that records why it refused before it answers (an audited
// reason). w is only for http.MaxBytesReader, which closes the connection
// of a body too large.
func Parse(w http.ResponseWriter, r *http.Request, limit int64, v any) *problem.Problem {
	body, p := read(w, r, limit)
	if p != nil {
		return p
	}
	if err := Decode(body, v); err != nil {
		p := problem.New(http.StatusBadRequest, "invalid_request", "the body must be a JSON object with the documented fields: "+err.Error())
		if fe, ok := errors.AsType[*FieldError](err); ok {
			p.Extra = map[string]any{"field": fe.Field}
		}
		return p
	}
	return nil
}

// Read returns r's body, at most limit bytes, when its Content-Type is
// JSON or absent. On failure it has answered (415, 413 or 400) and
// returns false. For a handler with a parser of its own (ingest).
func Read(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	body, p := read(w, r, limit)
	return body, answered(w, p)
}

// answered writes p, if any, and says whether the request may go on.
func answered(w http.ResponseWriter, p *problem.Problem) bool {
	if p != nil {
		problem.Write(w, p)
		return false
	}
	return true
}

func read(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *problem.Problem) {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return nil, problem.New(http.StatusUnsupportedMediaType, "unsupported_media_type", "send the body as application/json")
		}
	}
	body, err := readAll(http.MaxBytesReader(w, r.Body, limit), r.ContentLength, limit)
	var tooLarge *http.MaxBytesError
	var refused *problem.Problem
	switch {
	case errors.As(err, &tooLarge):
		return nil, problem.New(http.StatusRequestEntityTooLarge, "payload_too_large", fmt.Sprintf("the body may be at most %d bytes", limit))
	case errors.As(err, &refused):
		// The caller's body reader refused it (a bound on bytes held).
		return nil, refused
	case err != nil:
		return nil, problem.New(http.StatusBadRequest, "invalid_request", "the body could not be read to its end")
	}
	return body, nil
}

// preallocated bounds readAll's buffer before the bytes arrive.
const preallocated = 64 << 10

// readAll is io.ReadAll with the buffer sized from a declared length (one
// read into place instead of a buffer grown from 512 bytes), trusting the
// declaration no further than limit.
func readAll(r io.Reader, declared, limit int64) ([]byte, error) {
	if declared <= 0 || declared > limit {
		return io.ReadAll(r)
	}
	// +1: room to read EOF without growing. At most preallocated: memory
	// for bytes declared but not sent (yet) is not taken in advance.
	b := make([]byte, 0, min(declared+1, preallocated))
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
		if len(b) == cap(b) { // longer than declared: grow as io.ReadAll does
			b = append(b, 0)[:len(b)]
		}
	}
}

// Decode is JSON's parser: body holds one JSON object (blank: {}) whose
// fields v knows. Its errors name the field, never echo the body.
func Decode(body []byte, v any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		body = []byte("{}")
	}
	if body[0] != '{' {
		return errors.New("not an object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if fe := FieldOf(err); fe != nil {
			return fe
		}
		return errors.New("malformed JSON")
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("more after the object")
	}
	return nil
}

// FieldOf is the member a JSON decoding error (encoding/json's, with
// DisallowUnknownFields) refuses by name, or nil when it names none.
func FieldOf(err error) *FieldError {
	var ute *json.UnmarshalTypeError
	switch {
	case errors.As(err, &ute) && ute.Field != "":
		return &FieldError{ute.Field, "has the wrong type"}
	case strings.HasPrefix(err.Error(), `json: unknown field "`):
		name, _ := strconv.Unquote(strings.TrimPrefix(err.Error(), "json: unknown field "))
		return &FieldError{name, "is an unknown field"}
	}
	return nil
}

// FieldError is a body member refused by name: one of the wrong type, or
// one the request does not have. Its name is answered in the problem's
// field member.
type FieldError struct{ Field, Why string }

func (e *FieldError) Error() string { return e.Field + " " + e.Why }
