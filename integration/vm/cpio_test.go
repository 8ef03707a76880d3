package vm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCPIOReadByBusybox writes an archive and unpacks it with busybox cpio,
// an independent reader of the newc format.
func TestCPIOReadByBusybox(t *testing.T) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("no busybox to read the archive back (make kernel-deps installs busybox-static); the VM boot tests read it too")
	}
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, []byte("copied from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	c := newCPIO(&buf)
	c.Dir("a", 0o755)
	c.Dir("a/b", 0o700)
	c.File("a/b/odd", 0o600, []byte("x")) // 1 byte: padding follows
	c.File("/a/empty", 0o644, nil)        // leading slash dropped
	c.CopyFile("a/copied", 0o755, src)
	c.Symlink("a/link", "b/odd")
	c.File("a/b/name-of-odd-length", 0o644, []byte("hello\n"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive is %d bytes, want a multiple of 4 so another can follow", buf.Len())
	}

	dir := t.TempDir()
	cmd := exec.Command(bb, "cpio", "-i", "-d")
	cmd.Dir = dir
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("busybox cpio -i: %v\n%s", err, out)
	}
	for name, want := range map[string]string{
		"a/b/odd":                "x",
		"a/empty":                "",
		"a/copied":               "copied from the host\n",
		"a/link":                 "x", // through the symlink
		"a/b/name-of-odd-length": "hello\n",
	} {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(got) != want {
			t.Errorf("%s = %q, %v; want %q", name, got, err, want)
		}
	}
	if st, err := os.Stat(filepath.Join(dir, "a/copied")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("a/copied mode = %v, %v; want 0755", st.Mode(), err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "a/link")); err != nil || target != "b/odd" {
		t.Errorf("a/link -> %q, %v; want b/odd", target, err)
	}
}

func TestScanConsole(t *testing.T) {
	console := "\x1b[2Jboot noise\r\n=== RUN   TestX\r\n    --- SKIP: TestX/sub (0.00s)\r\n" +
		"PASS\r\n" + Marker + "7\r\n[    6.3] reboot: Power down\r\n"
	var out strings.Builder
	res, seen, err := scanConsole(strings.NewReader(console), &out)
	if err != nil || !seen || res.ExitCode != 7 || !res.Skipped {
		t.Errorf("scanConsole = %+v, seen %v, %v; want exit 7, skipped, marker seen", res, seen, err)
	}
	if strings.Contains(out.String(), "\r") || !strings.Contains(out.String(), "PASS\n") {
		t.Errorf("console copy %q: want the lines with \\n endings only", out.String())
	}

	res, seen, err = scanConsole(strings.NewReader("Kernel panic - not syncing: Attempted to kill init!\r\n"), &out)
	if err != nil || seen {
		t.Errorf("scanConsole of a panic = %+v, seen %v, %v; want no marker", res, seen, err)
	}
}

func TestWritePayloadRejectsNewlines(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := writePayload(&buf, Payload{Binary: bin, Args: []string{"-test.run=A\nB"}}); err == nil {
		t.Error("writePayload accepted an argument with a newline, which /init would split")
	}
	if err := writePayload(&buf, Payload{Binary: bin, Env: []string{"NOEQUALS"}}); err == nil {
		t.Error("writePayload accepted an environment entry without '='")
	}
}
