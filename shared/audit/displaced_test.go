package audit

import "testing"

func TestDisplacedIDReadsBack(t *testing.T) {
	id := DisplacedID("a1b2c3.2", 41, []byte{0xde, 0xad, 0xbe, 0xef, 0, 1})
	if id != "a1b2c3.2!41-deadbeef0001" {
		t.Fatalf("DisplacedID = %q", id)
	}
	if w, seq, ok := ParseDisplaced(id); !ok || w != "a1b2c3.2" || seq != 41 {
		t.Fatalf("ParseDisplaced(%q) = %q, %d, %v", id, w, seq, ok)
	}
	// A displaced chain's own row displaced again nests.
	if w, seq, ok := ParseDisplaced(DisplacedID(id, 1, []byte{7})); !ok || w != id || seq != 1 {
		t.Fatalf("nested: %q, %d, %v", w, seq, ok)
	}
}

func TestParseDisplacedRefusesOtherIDs(t *testing.T) {
	for _, id := range []string{"", "a1b2c3", "a1b2c3.2", "!1-ab", "w!", "w!1", "w!1-", "w!x-ab", "w!0-ab", "w!-1-ab", "w!1-zz", "w!1-abc"} {
		if w, seq, ok := ParseDisplaced(id); ok {
			t.Errorf("ParseDisplaced(%q) = %q, %d, true", id, w, seq)
		}
	}
}
