package fnserve

import (
	"encoding/binary"
	"testing"

	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The native-only program lets the process's own architecture through
// and refuses every other (a 32-bit system call made with int 0x80 on
// x86-64), run here on seccomp_data of each.
func TestNativeOnlyRefusesOtherArchitectures(t *testing.T) {
	raw, err := nativeOnly()
	if err != nil {
		t.Fatal(err)
	}
	insns, ok := bpf.Disassemble(raw)
	if !ok {
		t.Fatal("the program does not disassemble")
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		t.Fatal(err)
	}
	native, err := arch.GetInfo("")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		arch uint32
		want uint32
	}{
		{"native", uint32(native.ID), unix.SECCOMP_RET_ALLOW},
		{"i386", uint32(arch.I386.ID), unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{"arm", uint32(arch.ARM.ID), unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
	} {
		if tc.arch == uint32(native.ID) && tc.name != "native" {
			continue
		}
		// struct seccomp_data: int nr, u32 arch, u64 ip, u64 args[6]. The
		// VM reads words big-endian (the kernel, in the host's order).
		data := make([]byte, 64)
		binary.BigEndian.PutUint32(data[0:], 41) // socket on x86-64
		binary.BigEndian.PutUint32(data[seccompArchOffset:], tc.arch)
		got, err := vm.Run(data)
		if err != nil {
			t.Fatal(err)
		}
		if uint32(got) != tc.want {
			t.Errorf("%s: %#x, want %#x", tc.name, got, tc.want)
		}
	}
}
