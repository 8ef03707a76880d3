package docstest

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// root is the repository, from this package's directory.
const root = "../.."

// maxREADMELines is how long the README may grow: a newcomer reads it in
// ten minutes; the rest belongs in docs/.
const maxREADMELines = 250

// mdLink matches an inline markdown link or image: [text](target) or
// [text](target "title").
var mdLink = regexp.MustCompile(`\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)

// page is one markdown file: its links and the anchors of its headings.
type page struct {
	path    string // relative to root, slash-separated
	lines   int
	links   []link
	anchors map[string]bool
}

type link struct {
	line   int
	target string
}

// readPage reads a markdown file, skipping fenced code blocks and inline
// code spans, where brackets are not links and # is not a heading.
func readPage(t *testing.T, rel string) page {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(rel)))
	if err != nil {
		t.Fatal(err)
	}
	p := page{path: rel, anchors: map[string]bool{}}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	p.lines = len(lines)
	fenced := false
	seen := map[string]int{}
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			fenced = !fenced
			continue
		}
		if fenced {
			continue
		}
		if h, ok := strings.CutPrefix(l, "#"); ok {
			a := slug(strings.TrimLeft(h, "#"))
			if n := seen[a]; n > 0 {
				p.anchors[a+"-"+strconv.Itoa(n)] = true
			} else {
				p.anchors[a] = true
			}
			seen[a]++
		}
		for _, m := range mdLink.FindAllStringSubmatch(withoutCodeSpans(l), -1) {
			p.links = append(p.links, link{line: i + 1, target: m[1]})
		}
	}
	return p
}

// withoutCodeSpans blanks `...` spans of a line.
func withoutCodeSpans(l string) string {
	var b strings.Builder
	in := false
	for _, r := range l {
		if r == '`' {
			in = !in
			continue
		}
		if !in {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// slug is the anchor GitHub gives a heading: code spans' backquotes and
// punctuation dropped (but - and _), lower case, spaces as -.
func slug(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(strings.ReplaceAll(h, "`", ""))) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// docPages is README.md and every docs/*.md, relative to root.
func docPages(t *testing.T) []string {
	t.Helper()
	pages := []string{"README.md"}
	matches, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	if len(matches) == 0 {
		t.Fatal("no docs/*.md found")
	}
	for _, m := range matches {
		pages = append(pages, "docs/"+filepath.Base(m))
	}
	return pages
}

// TestDocLinksResolve: every relative link of README.md and docs/*.md
// names a file or directory that exists and, with #anchor, a heading of
// that markdown file (or of the page itself).
func TestDocLinksResolve(t *testing.T) {
	pages := map[string]page{}
	names := docPages(t)
	for _, n := range names {
		pages[n] = readPage(t, n)
	}
	for _, n := range names {
		p := pages[n]
		for _, l := range p.links {
			if strings.Contains(l.target, "://") || strings.HasPrefix(l.target, "mailto:") {
				continue
			}
			file, anchor, _ := strings.Cut(l.target, "#")
			target := n // a bare #anchor is in the page itself
			if file != "" {
				if strings.HasPrefix(file, "/") {
					t.Errorf("%s:%d: link %q is absolute; use a path relative to the page", n, l.line, l.target)
					continue
				}
				target = filepath.ToSlash(filepath.Clean(filepath.Join(filepath.Dir(n), file)))
				if target == ".." || strings.HasPrefix(target, "../") {
					t.Errorf("%s:%d: link %q leaves the repository", n, l.line, l.target)
					continue
				}
				if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(target))); err != nil {
					t.Errorf("%s:%d: link %q: %s does not exist", n, l.line, l.target, target)
					continue
				}
			}
			if anchor == "" || !strings.HasSuffix(target, ".md") {
				continue
			}
			tp, ok := pages[target]
			if !ok {
				tp = readPage(t, target)
				pages[target] = tp
			}
			if !tp.anchors[anchor] {
				t.Errorf("%s:%d: link %q: %s has no heading with anchor #%s", n, l.line, l.target, target, anchor)
			}
		}
	}
}

// TestREADMEIsShortAndLinksEveryPage: the README stays a ten-minute read
// and is the way into every page of docs/.
func TestREADMEIsShortAndLinksEveryPage(t *testing.T) {
	readme := readPage(t, "README.md")
	if readme.lines > maxREADMELines {
		t.Errorf("README.md has %d lines, at most %d: move the details into docs/", readme.lines, maxREADMELines)
	}
	linked := map[string]bool{}
	for _, l := range readme.links {
		file, _, _ := strings.Cut(l.target, "#")
		linked[filepath.ToSlash(filepath.Clean(file))] = true
	}
	for _, n := range docPages(t)[1:] {
		if !linked[n] {
			t.Errorf("README.md does not link %s: every page of docs/ is reachable from it", n)
		}
	}
}

// TestSlug pins the anchor rule against headings these pages use.
func TestSlug(t *testing.T) {
	for h, want := range map[string]string{
		" 4. IPAM": "4-ipam",
		" The lab with IPIP, in a qemu-booted kernel": "the-lab-with-ipip-in-a-qemu-booted-kernel",
		" IPAM: who holds what, leaks, configuration": "ipam-who-holds-what-leaks-configuration",
		" What `make test` does":                      "what-make-test-does",
		" 2. Resources (`apiVersion: rhizome.io/v1`)": "2-resources-apiversion-rhizomeiov1",
	} {
		if got := slug(h); got != want {
			t.Errorf("slug(%q) = %q, want %q", h, got, want)
		}
	}
}
