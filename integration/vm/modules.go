package vm

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strings"
)

// moduleIndex is what depmod wrote about a kernel's modules: the file of
// each loadable module with the modules it needs, and the modules built in.
type moduleIndex struct {
	deps    map[string][]string // module file (relative to the release dir) → files it needs
	byName  map[string]string   // module name ("ip_tunnel") → file
	builtin map[string]bool     // module names compiled into the kernel
}

// moduleName is the name insmod and modules.dep agree on: the file's base
// name without .ko (and compression suffix), with '-' read as '_'.
func moduleName(file string) string {
	base := path.Base(file)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// parseModuleIndex reads modules.dep ("file: dep dep ...") and
// modules.builtin (one file a line).
func parseModuleIndex(dep, builtin io.Reader) (*moduleIndex, error) {
	idx := &moduleIndex{deps: map[string][]string{}, byName: map[string]string{}, builtin: map[string]bool{}}
	sc := bufio.NewScanner(dep)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		file, rest, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("modules.dep line %d %q: no colon: rerun depmod", n, line)
		}
		idx.deps[file] = strings.Fields(rest)
		idx.byName[moduleName(file)] = file
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	if builtin != nil {
		sc = bufio.NewScanner(builtin)
		for sc.Scan() {
			if f := strings.TrimSpace(sc.Text()); f != "" {
				idx.builtin[moduleName(f)] = true
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("read modules.builtin: %w", err)
		}
	}
	return idx, nil
}

// loadOrder returns the module files to insmod, dependencies first, for the
// named modules; modules built into the kernel need nothing and are left out.
// A name the kernel has neither as module nor built in is an error.
func (idx *moduleIndex) loadOrder(names []string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1: visiting, 2: done
	var visit func(file string) error
	visit = func(file string) error {
		switch state[file] {
		case 1:
			return fmt.Errorf("module %s: dependency cycle in modules.dep", file)
		case 2:
			return nil
		}
		deps, ok := idx.deps[file]
		if !ok {
			return fmt.Errorf("module file %s is not in modules.dep: rerun depmod", file)
		}
		state[file] = 1
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		state[file] = 2
		order = append(order, file)
		return nil
	}
	for _, n := range names {
		n = strings.ReplaceAll(n, "-", "_")
		if idx.builtin[n] {
			continue
		}
		file, ok := idx.byName[n]
		if !ok {
			return nil, fmt.Errorf("kernel module %s: neither in modules.dep nor built in: check the name or the kernel config", n)
		}
		if err := visit(file); err != nil {
			return nil, err
		}
	}
	return order, nil
}
