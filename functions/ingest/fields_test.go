package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// readFieldsV1 is what ingest did before readFields: encoding/json, which
// deployed agents were tested against. readFields must agree with it on
// every input.
func readFieldsV1(body []byte) (snapshot, error) {
	var s snapshot
	err := json.Unmarshal(body, &s)
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		return s, errFieldType
	}
	return s, err
}

func sameFields(t *testing.T, body string) {
	t.Helper()
	if len(body) == 0 || body[0] != '{' {
		return // parse refuses these before decoding
	}
	got, gotErr := readFields([]byte(body))
	want, wantErr := readFieldsV1([]byte(body))
	if (gotErr == nil) != (wantErr == nil) || errors.Is(gotErr, errFieldType) != errors.Is(wantErr, errFieldType) {
		t.Fatalf("%q: error %v, encoding/json says %v", body, gotErr, wantErr)
	}
	if gotErr != nil {
		return
	}
	for _, f := range []struct {
		name      string
		got, want *string
	}{{"timestamp", got.Timestamp, want.Timestamp}, {"collector_version", got.CollectorVersion, want.CollectorVersion}, {"server_id", got.ServerID, want.ServerID}} {
		if (f.got == nil) != (f.want == nil) || (f.got != nil && *f.got != *f.want) {
			t.Fatalf("%q: %s %v, encoding/json says %v", body, f.name, deref(f.got), deref(f.want))
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return "\"" + *s + "\""
}

// The cases where a stricter decoder would part from encoding/json.
func TestReadFieldsAgreesWithEncodingJSON(t *testing.T) {
	for _, body := range []string{
		`{"timestamp":"2026-11-28T11:00:00Z","collector_version":"1.0.0"}`,
		`{"timestamp":"a","timestamp":"b"}`,                         // duplicates: the last wins
		`{"timestamp":"a","timestamp":null}`,                        // null clears
		`{"TimeStamp":"a","COLLECTOR_VERSION":"b","Server_Id":"c"}`, // names fold
		`{"timeſtamp":"a"}`,                                         // Unicode folding (ſ is s)
		`{"time\u0073tamp":"a","collector\u005fversion":"b"}`,       // escaped names
		`{"timestamp":"\ud800x","collector_version":"\xff\xfe"}`,    // lone surrogate, invalid UTF-8
		`{"timestamp":"a\u0000b"}`,
		`{"timestamp":1}`, `{"timestamp":{"a":1}}`, `{"server_id":[1]}`, `{"collector_version":true}`,
		`{"timestamp":1,"disks":[1,]}`, // syntax wins over type
		`{"a":{"timestamp":7}}`,        // nested names are not fields
		`{"timestamp":"a"} `, `{"timestamp":"a"}x`, `{"timestamp":"a"}{}`, `{"a":1,}`, `{"a" 1}`, `{`,
		`{"a":"` + "\x01" + `"}`, `{"a":01}`, `{"a":1e}`, `{"a":-}`, `{"a":tru}`,
		`{"a":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`, // past encoding/json's depth limit
		crucibleSnapshot(time.Date(2026, 11, 28, 11, 0, 0, 0, time.UTC), "8b1c2a7e-9b1d-4f3a-8c2e-1d2f3a4b5c6d"),
	} {
		sameFields(t, body)
	}
}

// FuzzReadFields holds readFields to encoding/json's verdicts and values.
func FuzzReadFields(f *testing.F) {
	f.Add(`{"timestamp":"2026-11-28T11:00:00Z","collector_version":"1.0.0","server_id":"x"}`)
	f.Add(`{"TIMESTAMP":"a","time\u0073tamp":null,"disks":[{"a":1.5e3}]}`)
	f.Add(`{"collector_version":"\ud83d\ude00\ud800"}`)
	f.Add(`{"timestamp":7,"x":[1,]}`)
	f.Fuzz(func(t *testing.T, body string) { sameFields(t, body) })
}

// BenchmarkReadFields is the JSON part of BenchmarkParse, against the
// encoding/json it replaced.
func BenchmarkReadFields(b *testing.B) {
	body := []byte(crucibleSnapshot(time.Now(), ""))
	for _, impl := range []struct {
		name string
		read func([]byte) (snapshot, error)
	}{{"jsontext", readFields}, {"encoding-json", readFieldsV1}} {
		b.Run(impl.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := impl.read(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
