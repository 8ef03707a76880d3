package daemon

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// settingsTable is the README's table of rhizome-node's settings.
func settingsTable() string {
	var b strings.Builder
	for _, s := range Settings() {
		def := "`" + s.Default + "`"
		switch {
		case s.Flag == "node-name":
			def = "the host name"
		case s.Default == "":
			def = ""
		}
		fmt.Fprintf(&b, "| `--%s` | `%s` | %s | %s |\n", s.Flag, s.Env, def, s.Help)
	}
	return b.String()
}

// TestREADMESettings keeps the README's configuration table true: it must
// be exactly what the agent accepts. RHIZOME_WRITE_README=1 rewrites it.
func TestREADMESettings(t *testing.T) {
	const path = "../README.md"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme, table := string(data), settingsTable()
	const head = "| flag | environment | default | meaning |\n|---|---|---|---|\n"
	i := strings.Index(readme, head)
	if i < 0 {
		t.Fatalf("README has no settings table (header %q)", head)
	}
	rest := readme[i+len(head):]
	end := strings.Index(rest, "\n\n")
	if end < 0 {
		end = len(rest)
	}
	if got := rest[:end+1]; got != table {
		if os.Getenv("RHIZOME_WRITE_README") == "1" {
			if err := os.WriteFile(path, []byte(readme[:i+len(head)]+table+rest[end+1:]), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("README's settings table differs from the agent's flags; rerun with RHIZOME_WRITE_README=1\n--- README ---\n%s--- agent ---\n%s", got, table)
	}
}
