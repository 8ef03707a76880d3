package main

import (
	"reflect"
	"testing"
	"time"

	"github.com/rhizome-net/rhizome/integration/vm"
)

func TestGuestArgs(t *testing.T) {
	in := []string{"-test.paniconexit0", "-test.testlogfile=/tmp/go-build1/b001/testlog.txt", "-test.timeout=10m0s", "-test.run=^TestKernel"}
	want := []string{"-test.v=true", "-test.paniconexit0", "-test.timeout=10m0s", "-test.run=^TestKernel"}
	if got := guestArgs(in, true); !reflect.DeepEqual(got, want) {
		t.Errorf("guestArgs(%q, true) = %q, want %q", in, got, want)
	}
	// go test -json asks for test2json framing: kept, and nothing added.
	in = []string{"-test.v=test2json", "-test.run=X"}
	if got := guestArgs(in, true); !reflect.DeepEqual(got, in) {
		t.Errorf("guestArgs(%q, true) = %q, want it unchanged", in, got)
	}
	if got := guestArgs([]string{"-test.run=X"}, false); !reflect.DeepEqual(got, []string{"-test.run=X"}) {
		t.Errorf("guestArgs without fail-on-skip added arguments: %q", got)
	}
}

func TestGuestTimeout(t *testing.T) {
	if got := guestTimeout([]string{"-test.timeout=2m0s"}); got != 3*time.Minute {
		t.Errorf("guestTimeout(2m) = %s, want the test's own timeout plus a minute", got)
	}
	if got := guestTimeout(nil); got != 11*time.Minute {
		t.Errorf("guestTimeout() = %s, want go test's default 10m plus a minute", got)
	}
}

func TestGuestEnv(t *testing.T) {
	got := guestEnv([]string{"HOME=/root", "RHIZOME_ETCD=x", "GOTRACEBACK=all", vm.InsideEnv + "=0", "PATH=/bin"})
	want := []string{vm.InsideEnv + "=1", "RHIZOME_ETCD=x", "GOTRACEBACK=all"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("guestEnv = %q, want %q", got, want)
	}
}

func TestSplitList(t *testing.T) {
	if got := splitList(" a,,b ,"); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("splitList = %q, want [a b]", got)
	}
	if got := splitList(""); got != nil {
		t.Errorf("splitList(\"\") = %q, want none", got)
	}
}
