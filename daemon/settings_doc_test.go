package daemon

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// settingsTable is docs/configuration.md's table of rhizome-node's settings.
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

// TestSettingsDoc keeps the configuration page's settings table true: it
// must be exactly what the agent accepts. RHIZOME_WRITE_README=1 rewrites
// it (the variable keeps its old name, from when the table was in the
// README).
func TestSettingsDoc(t *testing.T) {
	const path = "../docs/configuration.md"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc, table := string(data), settingsTable()
	const head = "| flag | environment | default | meaning |\n|---|---|---|---|\n"
	i := strings.Index(doc, head)
	if i < 0 {
		t.Fatalf("%s has no settings table (header %q)", path, head)
	}
	rest := doc[i+len(head):]
	end := strings.Index(rest, "\n\n")
	if end < 0 {
		end = len(rest)
	}
	if got := rest[:end+1]; got != table {
		if os.Getenv("RHIZOME_WRITE_README") == "1" {
			if err := os.WriteFile(path, []byte(doc[:i+len(head)]+table+rest[end+1:]), 0o644); err != nil {
				t.Fatal(err)
			}
			return
		}
		t.Errorf("%s: the settings table differs from the agent's flags; rerun with RHIZOME_WRITE_README=1\n--- %s ---\n%s--- agent ---\n%s", path, path, got, table)
	}
}
