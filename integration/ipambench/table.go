package ipambench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// Row is one line of the report. Empty cells print as "-".
type Row struct {
	Scenario string
	Rhizome  string
	Baseline string
	// Ratio is rhizome / baseline (for scenario 4: the growth against the smallest pool).
	Ratio string
	// Target is the goal from docs/design.md §10 and whether it was met, e.g. "≥ 1,000/s  ok".
	Target string
}

// Table is the report `make bench` prints.
type Table struct {
	Title string
	Rows  []Row
	Notes []string
}

// Add appends a row.
func (t *Table) Add(r Row) { t.Rows = append(t.Rows, r) }

// WriteTo prints the table with aligned columns.
func (t *Table) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	b.WriteString(t.Title + "\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\trhizome\tbaseline (host-local)\tratio\ttarget")
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	for _, r := range t.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Scenario, dash(r.Rhizome), dash(r.Baseline), dash(r.Ratio), r.Target)
	}
	if err := tw.Flush(); err != nil {
		return 0, err
	}
	for _, n := range t.Notes {
		b.WriteString(n + "\n")
	}
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

// verdict says whether a goal was met: "ok" or "MISSED".
func verdict(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISSED"
}
