package audit

import (
	"strings"
	"testing"
)

func TestParseAcceptedReadsEntriesAsVerifyWritesThem(t *testing.T) {
	rewritten := Break{WriterID: "a1b2c3-0.2", WriterSeq: 6, RowID: 41, Reason: "rewritten", Hash: []byte{0xab, 0xcd}}
	content := Break{WriterID: "a1b2c3-0", WriterSeq: 2, RowID: 17, Reason: "content"}
	// The hash as written by hand may be in upper case.
	list := "# investigated\n\n" + content.Entry() + "   # restored\n" + "a1b2c3-0.2 6 rewritten ABCD\n"
	if got, want := rewritten.Entry(), "a1b2c3-0.2 6 rewritten abcd"; got != want {
		t.Fatalf("entry %q, want %q", got, want)
	}
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
		"another seq of the chain":                {Break{WriterID: "a1b2c3-0", WriterSeq: 3, Reason: "content"}, false},
		"another reason at the seq":               {Break{WriterID: "a1b2c3-0", WriterSeq: 2, Reason: "customer"}, false},
		"another chain at the seq":                {Break{WriterID: "a1b2c3-1", WriterSeq: 2, Reason: "content"}, false},
		"the chain recomputed again (other hash)": {Break{WriterID: "a1b2c3-0.2", WriterSeq: 6, Reason: "rewritten", Hash: []byte{0xab, 0xce}}, false},
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
		"writer id alone":                "a1b2c3-0",
		"no reason":                      "a1b2c3-0 2",
		"seq not a number":               "a1b2c3-0 two content",
		"seq zero":                       "a1b2c3-0 0 content",
		"negative seq":                   "a1b2c3-0 -1 content",
		"unknown reason":                 "a1b2c3-0 2 edited",
		"extra field":                    "a1b2c3-0 2 content abcd",
		"rewritten without its hash":     "a1b2c3-0 6 rewritten",
		"rewritten with a hash not hex":  "a1b2c3-0 6 rewritten xyz",
		"rewritten with too many fields": "a1b2c3-0 6 rewritten abcd ef",
	} {
		_, err := ParseAccepted(strings.NewReader("a1b2c3-0 1 gap\n" + line + "\n"))
		if err == nil || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("%s: %v, want an error naming line 2", name, err)
		}
	}
}
