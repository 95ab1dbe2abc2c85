package audit

import (
	"strings"
	"testing"
)

func TestParseAcceptedReadsEntriesAsVerifyWritesThem(t *testing.T) {
	rewritten := Break{WriterID: "a1b2c3-0.2", WriterSeq: 6, RowID: 41, Reason: "rewritten", Prev: []byte{0x01}, Hash: []byte{0xab, 0xcd}}
	content := Break{WriterID: "a1b2c3-0", WriterSeq: 2, RowID: 17, Reason: "content", Prev: []byte{0x02}, Hash: []byte{0x03}}
	displaced := Break{WriterID: "a1b2c3-1", WriterSeq: 9, Reason: "displaced"}
	odd := Break{WriterID: "w 7 gap #", WriterSeq: 2, Reason: "gap", Hash: []byte{0x04}}
	nameless := Break{WriterID: "", WriterSeq: 1, Reason: "gap", Hash: []byte{0x05}}
	if got, want := rewritten.Entry(), "a1b2c3-0.2 6 rewritten 01 abcd"; got != want {
		t.Fatalf("entry %q, want %q", got, want)
	}
	if got, want := displaced.Entry(), "a1b2c3-1 9 displaced - -"; got != want {
		t.Fatalf("entry %q, want %q", got, want)
	}
	if got := odd.Entry(); strings.ContainsAny(strings.TrimPrefix(got, "x:"), "#") || len(strings.Fields(got)) != 5 {
		t.Fatalf("a writer id with spaces and # makes the entry %q", got)
	}
	// Hashes written by hand may be in upper case.
	list := "# investigated\n\n" + content.Entry() + "   # restored\n" + "a1b2c3-0.2 6 rewritten 01 ABCD\n" + displaced.Entry() + "\n" + odd.Entry() + "\n" + nameless.Entry() + "\n"
	a, err := ParseAccepted(strings.NewReader(list))
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		b    Break
		want bool
	}{
		"a listed break":                          {content, true},
		"a listed recomputation":                  {rewritten, true},
		"a listed displacement":                   {displaced, true},
		"a writer id that needed encoding":        {odd, true},
		"a writer id of nothing":                  {nameless, true},
		"another seq of the chain":                {Break{WriterID: "a1b2c3-0", WriterSeq: 3, Reason: "content", Prev: []byte{0x02}, Hash: []byte{0x03}}, false},
		"another reason at the seq":               {Break{WriterID: "a1b2c3-0", WriterSeq: 2, Reason: "customer", Prev: []byte{0x02}, Hash: []byte{0x03}}, false},
		"another chain at the seq":                {Break{WriterID: "a1b2c3-1", WriterSeq: 2, Reason: "content", Prev: []byte{0x02}, Hash: []byte{0x03}}, false},
		"the rows before it changed":              {Break{WriterID: "a1b2c3-0", WriterSeq: 2, Reason: "content", Prev: []byte{0x12}, Hash: []byte{0x03}}, false},
		"its row edited again":                    {Break{WriterID: "a1b2c3-0", WriterSeq: 2, Reason: "content", Prev: []byte{0x02}, Hash: []byte{0x13}}, false},
		"the chain recomputed again (other hash)": {Break{WriterID: "a1b2c3-0.2", WriterSeq: 6, Reason: "rewritten", Prev: []byte{0x01}, Hash: []byte{0xab, 0xce}}, false},
		"the id the odd one would have spoofed":   {Break{WriterID: "w", WriterSeq: 7, Reason: "gap"}, false},
	} {
		if got := a.Has(c.b); got != c.want {
			t.Errorf("%s: accepted %v, want %v", name, got, c.want)
		}
	}
	var none Accepted
	if none.Has(content) {
		t.Error("no list accepts a break")
	}
}

func TestParseAcceptedRefusesWhatIsNoEntry(t *testing.T) {
	for name, line := range map[string]string{
		"writer id alone":       "a1b2c3-0",
		"no hashes":             "a1b2c3-0 2 content",
		"one hash":              "a1b2c3-0 2 content ab",
		"seq not a number":      "a1b2c3-0 two content ab cd",
		"seq zero":              "a1b2c3-0 0 content ab cd",
		"negative seq":          "a1b2c3-0 -1 content ab cd",
		"unknown reason":        "a1b2c3-0 2 edited ab cd",
		"extra field":           "a1b2c3-0 2 content ab cd ef",
		"a hash not hex":        "a1b2c3-0 6 rewritten ab xyz",
		"an odd-length hash":    "a1b2c3-0 6 rewritten abc cd",
		"x: writer id not hex":  "x:zz 2 gap - ab",
		"x: writer id is empty": "x: 2 gap - ab",
	} {
		_, err := ParseAccepted(strings.NewReader("a1b2c3-0 1 gap - ab\n" + line + "\n"))
		if err == nil || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("%s: %v, want an error naming line 2", name, err)
		}
	}
}
