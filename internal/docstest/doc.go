// Package docstest holds the checks on the repository's documentation
// (README.md and docs/*.md): every relative link resolves to a file or
// directory of the repository, and to a heading where it names one; the
// README stays short and links every page of docs/. It has no code of its
// own: the checks are its tests, so they run with every `go test ./...`.
package docstest
