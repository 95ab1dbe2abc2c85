package audit

import (
	"reflect"
	"testing"
)

func TestNextHeadsNeverMovePastABreak(t *testing.T) {
	h := func(seq int64, hash string) Head { return Head{Seq: seq, Hash: []byte(hash)} }
	for _, c := range []struct {
		name string
		rep  Report
		kept Heads
		want Heads
	}{
		{
			name: "a chain that held moves on, beside a broken one",
			rep:  Report{Heads: Heads{"a": h(9, "a9"), "b": h(1, "b1")}, Breaks: []Break{{WriterID: "b", WriterSeq: 2, Reason: "content"}}},
			kept: Heads{"a": h(5, "a5"), "b": h(3, "b3")},
			want: Heads{"a": h(9, "a9"), "b": h(3, "b3")},
		},
		{
			name: "a chain new since the last run gets a head, though another broke",
			rep:  Report{Heads: Heads{"c": h(4, "c4"), "b": h(1, "b1")}, Breaks: []Break{{WriterID: "b", WriterSeq: 2, Reason: "content"}}},
			kept: Heads{"b": h(3, "b3")},
			want: Heads{"c": h(4, "c4"), "b": h(3, "b3")},
		},
		{
			name: "a broken chain moves up to its last row before the break, past its kept head",
			rep:  Report{Heads: Heads{"b": h(7, "b7")}, Breaks: []Break{{WriterID: "b", WriterSeq: 8, Reason: "link"}}},
			kept: Heads{"b": h(5, "b5")},
			want: Heads{"b": h(7, "b7")},
		},
		{
			name: "a broken chain without a kept head keeps its rows before the break",
			rep:  Report{Heads: Heads{"b": h(2, "b2")}, Breaks: []Break{{WriterID: "b", WriterSeq: 3, Reason: "gap"}}},
			want: Heads{"b": h(2, "b2")},
		},
		{
			name: "a rewritten chain keeps the head that caught it",
			rep:  Report{Heads: Heads{"b": h(5, "b5'")}, Breaks: []Break{{WriterID: "b", WriterSeq: 6, Reason: "rewritten"}}},
			kept: Heads{"b": h(6, "b6")},
			want: Heads{"b": h(6, "b6")},
		},
		{
			name: "a truncated chain keeps the head that caught it",
			rep:  Report{Heads: Heads{"b": h(4, "b4")}, Breaks: []Break{{WriterID: "b", WriterSeq: 5, Reason: "truncated"}}},
			kept: Heads{"b": h(6, "b6")},
			want: Heads{"b": h(6, "b6")},
		},
		{
			name: "a removed chain keeps its head",
			rep:  Report{Heads: Heads{}, Breaks: []Break{{WriterID: "b", WriterSeq: 1, Reason: "truncated"}}},
			kept: Heads{"b": h(6, "b6")},
			want: Heads{"b": h(6, "b6")},
		},
		{
			name: "a chain displaced below its walked end gets no head past the displacement",
			rep:  Report{Heads: Heads{"b": h(6, "b6")}, Breaks: []Break{{WriterID: "b", WriterSeq: 2, Reason: "displaced"}}},
			want: Heads{},
		},
		{
			name: "a chain displaced below its walked end keeps its kept head",
			rep:  Report{Heads: Heads{"b": h(6, "b6")}, Breaks: []Break{{WriterID: "b", WriterSeq: 2, Reason: "displaced"}}},
			kept: Heads{"b": h(1, "b1")},
			want: Heads{"b": h(1, "b1")},
		},
	} {
		if got := c.rep.NextHeads(c.kept); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
