package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// utf8BOM is the byte order mark some editors put at the start of a file.
const utf8BOM = "\xef\xbb\xbf"

// looksLikeJSON reports whether data starts, after white space, with '{':
// such input is read as a stream of JSON objects, everything else as YAML.
func looksLikeJSON(data []byte) bool {
	t := bytes.TrimLeft(data, " \t\r\n")
	return len(t) > 0 && t[0] == '{'
}

// normalizeYAML turns U+00A0 no-break spaces into plain spaces. YAML copied
// from web pages is full of them (the Calico examples rhizome's users start
// from are), and YAML does not take them for white space, so such a
// document does not parse, or parses as one long string. Callers use this
// only for a document that failed as written, so that what rhizome itself
// prints (which may hold no-break spaces inside values) reads back
// unchanged.
func normalizeYAML(data []byte) []byte {
	return bytes.ReplaceAll(data, []byte(nbsp), []byte(" "))
}

// yamlDoc is one YAML document of a multi-document input.
type yamlDoc struct {
	text []byte
	line int // line of the input the document starts on
}

// splitYAML cuts data at "---" lines (a line that is "---", possibly
// followed by white space or a comment), as kubectl does.
func splitYAML(data []byte) []yamlDoc {
	var docs []yamlDoc
	start, startLine, line := 0, 1, 1
	for i := 0; i < len(data); line++ {
		end := len(data)
		if j := bytes.IndexByte(data[i:], '\n'); j >= 0 {
			end = i + j + 1
		}
		if isDocumentSeparator(data[i:end]) {
			docs = append(docs, yamlDoc{text: data[start:i], line: startLine})
			start, startLine = end, line+1
		}
		i = end
	}
	return append(docs, yamlDoc{text: data[start:], line: startLine})
}

func isDocumentSeparator(line []byte) bool {
	if !bytes.HasPrefix(line, []byte("---")) {
		return false
	}
	rest := bytes.TrimSpace(line[3:])
	return len(rest) == 0 || rest[0] == '#'
}

// decodeYAMLDocument decodes one YAML document (see decodeDocument), or
// reports that it is empty. A document that fails as written and holds
// no-break spaces is tried again with them read as spaces.
func decodeYAMLDocument(doc yamlDoc, label string) (objs []Object, empty bool, err error) {
	objs, empty, err = decodeYAMLOnce(doc, label)
	if err == nil || !bytes.Contains(doc.text, []byte(nbsp)) {
		return objs, empty, err
	}
	return decodeYAMLOnce(yamlDoc{text: normalizeYAML(doc.text), line: doc.line}, label)
}

func decodeYAMLOnce(doc yamlDoc, label string) ([]Object, bool, error) {
	js, err := yamlToJSON(doc)
	if err != nil {
		// Name the object if the document reads without strictness (it
		// failed on a duplicate key, say).
		if lenient, lerr := yaml.YAMLToJSON(doc.text); lerr == nil {
			if h, herr := peekHeader(lenient); herr == nil {
				label = withObject(label, h)
			}
		}
		return nil, false, fmt.Errorf("%s: %w", label, err)
	}
	if js == nil {
		return nil, true, nil
	}
	objs, err := decodeDocument(js, label)
	return objs, false, err
}

var (
	yamlLineRE      = regexp.MustCompile(`\bline (\d+)\b`)
	yamlDuplicateRE = regexp.MustCompile(`key (".*?") already set in map`)
)

// yamlToJSON converts one YAML document to JSON, rejecting duplicate keys.
// An empty document (nothing but comments, or null) gives nil. Line
// numbers in errors count from the start of the whole input.
func yamlToJSON(doc yamlDoc) ([]byte, error) {
	js, err := yaml.YAMLToJSONStrict(doc.text)
	if err != nil {
		msg := yamlLineRE.ReplaceAllStringFunc(err.Error(), func(m string) string {
			n, convErr := strconv.Atoi(strings.TrimPrefix(m, "line "))
			if convErr != nil {
				return m
			}
			return "line " + strconv.Itoa(n+doc.line-1)
		})
		msg = yamlDuplicateRE.ReplaceAllString(msg, "duplicate key $1")
		msg = strings.Join(strings.Fields(msg), " ")
		return nil, fmt.Errorf("invalid YAML: %s", msg)
	}
	if t := bytes.TrimSpace(js); len(t) == 0 || string(t) == "null" {
		return nil, nil
	}
	return js, nil
}

// singleDocument returns the JSON form of data, which must hold exactly
// one object, in JSON or YAML.
func singleDocument(data []byte) ([]byte, error) {
	if looksLikeJSON(data) {
		dec := json.NewDecoder(bytes.NewReader(data))
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, withQuoteHint(data, syntaxError(err))
		}
		if _, err := dec.Token(); err != io.EOF {
			return nil, errors.New("more than one object in the input: expected exactly one")
		}
		return raw, nil
	}
	var found []byte
	for _, doc := range splitYAML(data) {
		js, err := yamlToJSON(doc)
		if err != nil {
			return nil, err
		}
		if js == nil {
			continue
		}
		if found != nil {
			return nil, errors.New("more than one document in the input: expected exactly one object")
		}
		found = js
	}
	if found == nil {
		return nil, errors.New("the input is empty: expected one object")
	}
	return found, nil
}

// withQuoteHint adds a hint to a JSON syntax error when the input holds
// typographic quotes, which text copied from web pages often does.
func withQuoteHint(data []byte, err error) error {
	if bytes.ContainsAny(data, "\u201c\u201d\u2018\u2019") {
		return fmt.Errorf("%w (the input contains typographic quotes like \u201c\u201d: use plain \" quotes)", err)
	}
	return err
}
