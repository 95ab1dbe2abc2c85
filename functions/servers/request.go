package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits of an enrollment body (the first two match the servers table's
// checks, the tag limits are the API's).
const (
	MaxHostname  = 253
	MaxMachineID = 128
	MaxName      = 200
	MaxTags      = 32
	MaxTag       = 64
	// MaxIdempotencyKey matches the idempotency_keys table's check.
	MaxIdempotencyKey = 255
)

// Enrollment is a checked POST /api/v1/servers body.
type Enrollment struct {
	Hostname  string
	MachineID string // "" when the agent sent none
	Name      string // the hostname when the body named none
	Tags      []string
}

// FieldError is a body member that is missing or malformed. Field is ""
// when the body as a whole is unusable.
type FieldError struct {
	Field, Detail string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return e.Detail
	}
	return e.Field + ": " + e.Detail
}

// ParseEnrollment reads {hostname, machine_id?, name?, tags?}. Strings are
// trimmed; null is the same as absent; members it does not know are
// ignored, so an agent that sends more still enrolls.
func ParseEnrollment(body []byte) (Enrollment, *FieldError) {
	var raw map[string]json.RawMessage
	trimmed := bytes.Trim(body, " \t\r\n") // JSON's whitespace; TrimSpace's \f or U+0085 is not
	if len(trimmed) == 0 || trimmed[0] != '{' || json.Unmarshal(trimmed, &raw) != nil {
		return Enrollment{}, &FieldError{Detail: "the body must be a JSON object {hostname, machine_id?, name?, tags?}"}
	}
	var e Enrollment
	var ferr *FieldError
	var ok bool
	if e.Hostname, ok, ferr = text(raw, "hostname", MaxHostname); ferr != nil {
		return e, ferr
	} else if !ok {
		return e, &FieldError{"hostname", "required: a string of 1 to 253 characters"}
	}
	if e.MachineID, _, ferr = text(raw, "machine_id", MaxMachineID); ferr != nil {
		return e, ferr
	}
	if e.Name, ok, ferr = text(raw, "name", MaxName); ferr != nil {
		return e, ferr
	} else if !ok {
		e.Name = e.Hostname
		if utf8.RuneCountInString(e.Name) > MaxName {
			e.Name = string([]rune(e.Name)[:MaxName])
		}
	}
	e.Tags = []string{}
	if v, present := raw["tags"]; present && string(v) != "null" {
		var tags []json.RawMessage
		if json.Unmarshal(v, &tags) != nil {
			return e, &FieldError{"tags", "must be an array of strings"}
		}
		if len(tags) > MaxTags {
			return e, &FieldError{"tags", "at most 32 tags"}
		}
		for _, t := range tags {
			var s string
			if json.Unmarshal(t, &s) != nil {
				return e, &FieldError{"tags", "must be an array of strings"}
			}
			s = strings.TrimSpace(s)
			if !validText(s, MaxTag) {
				return e, &FieldError{"tags", "each tag is 1 to 64 characters, without control characters"}
			}
			e.Tags = append(e.Tags, s)
		}
	}
	return e, nil
}

// text reads an optional string member: ok is false when it is absent or
// null.
func text(raw map[string]json.RawMessage, field string, max int) (string, bool, *FieldError) {
	v, present := raw[field]
	if !present || string(v) == "null" {
		return "", false, nil
	}
	var s string
	if json.Unmarshal(v, &s) != nil {
		return "", false, &FieldError{field, "must be a string"}
	}
	s = strings.TrimSpace(s)
	if !validText(s, max) {
		return "", false, &FieldError{field, "must be 1 to " + strconv.Itoa(max) + " characters, without control characters"}
	}
	return s, true, nil
}

func validText(s string, max int) bool {
	if s == "" || utf8.RuneCountInString(s) > max {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false // NUL cannot even be stored
		}
	}
	return true
}

// Hash identifies the request for Idempotency-Key: a SHA-256 over the
// checked fields in canonical form, so key order, spacing and an explicit
// name equal to the hostname do not make two requests differ.
func (e Enrollment) Hash() []byte {
	var machine *string
	if e.MachineID != "" {
		machine = &e.MachineID
	}
	b, _ := json.Marshal(struct {
		Hostname  string   `json:"hostname"`
		MachineID *string  `json:"machine_id"`
		Name      string   `json:"name"`
		Tags      []string `json:"tags"`
	}{e.Hostname, machine, e.Name, e.Tags})
	sum := sha256.Sum256(append([]byte("POST /api/v1/servers\n"), b...))
	return sum[:]
}

// IdempotencyKey checks the Idempotency-Key header: absent is "", else 1
// to 255 visible ASCII characters.
func IdempotencyKey(v string) (string, *FieldError) {
	if v == "" {
		return "", nil
	}
	if len(v) > MaxIdempotencyKey {
		return "", &FieldError{"Idempotency-Key", "at most 255 characters"}
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x21 || v[i] > 0x7e {
			return "", &FieldError{"Idempotency-Key", "visible ASCII characters only"}
		}
	}
	return v, nil
}
