package plan

import "testing"

func TestSnapshotRetention(t *testing.T) {
	for p, want := range map[string]int{Free: 7, Pro: 90, "": 7, "enterprise-unknown": 7} {
		if got := SnapshotRetention(p); got != want {
			t.Errorf("SnapshotRetention(%q) = %d, want %d", p, got, want)
		}
	}
	m := SnapshotDays()
	m[Free] = 1000
	if SnapshotRetention(Free) != 7 {
		t.Fatal("a caller's edit changed the rule")
	}
}
