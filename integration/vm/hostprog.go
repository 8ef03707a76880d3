package vm

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// HostProgram returns the host files a dynamically linked program needs in
// the guest: the program found on PATH, its dynamic loader and the shared
// libraries ldd names, each at its host path, for Payload.Files. The guest
// has busybox only; a test that drives iproute2 (`ip netns`, which busybox's
// ip lacks) takes the host's ip this way. A static program is returned
// alone.
func HostProgram(name string) ([]string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("host program %s for the guest: %w", name, err)
	}
	path, err = filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("host program %s for the guest: %w", name, err)
	}
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("host program %s for the guest: %w", path, err)
	}
	dynamic := false
	for _, p := range f.Progs {
		dynamic = dynamic || p.Type == elf.PT_INTERP
	}
	f.Close()
	if !dynamic {
		return []string{path}, nil
	}
	out, err := exec.Command("ldd", path).Output()
	if err != nil {
		return nil, fmt.Errorf("host program %s for the guest: ldd: %w", path, err)
	}
	files, err := parseLDD(out)
	if err != nil {
		return nil, fmt.Errorf("host program %s for the guest: %w", path, err)
	}
	return append([]string{path}, files...), nil
}

// parseLDD picks the files out of ldd's output: "libc.so.6 => /lib/...
// (0x...)" lines and the loader's "/lib64/ld-linux-x86-64.so.2 (0x...)";
// the vDSO has no file.
func parseLDD(out []byte) ([]string, error) {
	var files []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if _, target, ok := strings.Cut(line, "=>"); ok {
			line = strings.TrimSpace(target)
		}
		if strings.HasPrefix(line, "not found") {
			return nil, fmt.Errorf("ldd: a library is missing: %s", sc.Text())
		}
		file, _, _ := strings.Cut(line, " ")
		if strings.HasPrefix(file, "/") {
			files = append(files, file)
		}
	}
	return files, sc.Err()
}
