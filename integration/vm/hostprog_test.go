package vm

import (
	"os"
	"reflect"
	"testing"
)

func TestParseLDD(t *testing.T) {
	out := []byte(`	linux-vdso.so.1 (0x00007fb3576ca000)
	libbpf.so.1 => /lib/x86_64-linux-gnu/libbpf.so.1 (0x00007fb35756a000)
	libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fb357341000)
	/lib64/ld-linux-x86-64.so.2 (0x00007fb3576cc000)
`)
	got, err := parseLDD(out)
	want := []string{"/lib/x86_64-linux-gnu/libbpf.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("parseLDD = %q, %v; want %q", got, err, want)
	}
	if _, err := parseLDD([]byte("\tlibmissing.so.1 => not found\n")); err == nil {
		t.Error("parseLDD accepted a missing library")
	}
}

// TestHostProgramIP finds iproute2's ip, which the lab runs in the guest,
// with its loader and libraries, all present on the host.
func TestHostProgramIP(t *testing.T) {
	files, err := HostProgram("ip")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Errorf("HostProgram(ip) = %q: want ip, its loader and libc at least", files)
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("HostProgram(ip) names %s: %v", f, err)
		}
	}
}
