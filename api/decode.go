package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"unicode/utf8"

	"sigs.k8s.io/yaml"
)

// Decode parses resources written in YAML or JSON: one object, several YAML
// documents separated by "---" lines (or a stream of JSON objects), or a
// list, either kind "List" with items (what `get -o yaml` prints for several
// objects) or Calico's typed lists ("IPPoolList"). Empty documents are
// skipped.
//
// Each object is strictly decoded into its Go type: unknown fields,
// duplicate keys and values of the wrong type are errors. apiVersion must be
// rhizome.io/v1 or projectcalico.org/v3 (accepted so that Calico YAML applies
// unchanged); decoded objects carry GroupVersion. Errors name the document
// (counting non-empty documents from 1) and, when known, the object:
//
//	document 2 (IPPool "rack-0"): unknown field "spec.cidrr"
//
// When any document fails, Decode returns no objects and an error that
// lists every failing document, one per line.
//
// Decode neither applies defaults nor validates: see SetDefaults and
// Validate.
func Decode(data []byte) ([]Object, error) {
	data = bytes.TrimPrefix(data, []byte(utf8BOM))
	var (
		objs []Object
		errs []error
	)
	if looksLikeJSON(data) {
		dec := json.NewDecoder(bytes.NewReader(data))
		for n := 1; ; {
			var raw json.RawMessage
			err := dec.Decode(&raw)
			if err == io.EOF {
				break
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("document %d: %w", n, withQuoteHint(data, syntaxError(err))))
				break
			}
			if string(raw) == "null" {
				continue // empty, like an empty YAML document
			}
			o, err := decodeDocument(raw, fmt.Sprintf("document %d", n))
			n++
			if err != nil {
				errs = append(errs, err)
				continue
			}
			objs = append(objs, o...)
		}
	} else {
		n := 0
		for _, doc := range splitYAML(data) {
			label := fmt.Sprintf("document %d", n+1)
			o, empty, err := decodeYAMLDocument(doc, label)
			if empty {
				continue
			}
			n++
			if err != nil {
				errs = append(errs, err)
				continue
			}
			objs = append(objs, o...)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return objs, nil
}

// DecodeInto strictly decodes one object, in JSON or YAML, into obj (a
// stored object, or an object after a patch). obj is reset first. A kind
// in data must match obj's; an apiVersion must be one Decode accepts. obj
// carries GroupVersion and its kind afterwards.
func DecodeInto(data []byte, obj Object) error {
	kind := kindOf(obj)
	if isNilObject(obj) || kind == "" {
		return fmt.Errorf("decode: cannot decode into %T: not a rhizome resource", obj)
	}
	data = bytes.TrimPrefix(data, []byte(utf8BOM))
	err := decodeInto(data, obj, kind)
	if err != nil && !looksLikeJSON(data) && bytes.Contains(data, []byte(nbsp)) {
		// Try again with no-break spaces read as spaces (see normalizeYAML).
		return decodeInto(normalizeYAML(data), obj, kind)
	}
	return err
}

func decodeInto(data []byte, obj Object, kind string) error {
	js, err := singleDocument(data)
	if err != nil {
		return fmt.Errorf("decode %s: %w", kind, err)
	}
	h, err := peekHeader(js)
	if err != nil {
		return fmt.Errorf("decode %s: %w", kind, err)
	}
	label := h.describe(kind)
	if h.hasKind && h.kind != kind {
		return fmt.Errorf("%s: kind is %q, expected %s", label, h.kind, kind)
	}
	if h.hasAPIVersion {
		if err := checkAPIVersion(h.apiVersion); err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
	}
	t := reflect.TypeOf(obj).Elem()
	if err := checkStrict(js, t); err != nil {
		return fmt.Errorf("%s: %w", label, addPlacementHint(err, t))
	}
	reflect.ValueOf(obj).Elem().SetZero()
	if err := json.Unmarshal(js, obj); err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	*obj.GetTypeMeta() = TypeMeta{APIVersion: GroupVersion, Kind: kind}
	return nil
}

// MarshalJSON returns the JSON form of obj, with apiVersion and kind set
// (obj itself is not modified).
func MarshalJSON(obj Object) ([]byte, error) {
	kind := kindOf(obj)
	if isNilObject(obj) || kind == "" {
		return nil, fmt.Errorf("encode: %T is not a rhizome resource", obj)
	}
	// Shallow copy, so that setting TypeMeta does not write to obj.
	v := reflect.New(reflect.TypeOf(obj).Elem())
	v.Elem().Set(reflect.ValueOf(obj).Elem())
	cp := v.Interface().(Object)
	*cp.GetTypeMeta() = TypeMeta{APIVersion: GroupVersion, Kind: kind}
	return json.Marshal(cp)
}

// MarshalYAML returns the YAML form of obj, with apiVersion and kind set.
func MarshalYAML(obj Object) ([]byte, error) {
	js, err := MarshalJSON(obj)
	if err != nil {
		return nil, err
	}
	return yaml.JSONToYAML(escapeForYAML(js))
}

// escapeForYAML escapes, in JSON text, the characters that JSON allows raw
// in strings but YAML does not (DEL, C1 controls, U+FFFE, U+FFFF), because
// JSONToYAML reads the JSON as YAML. They can only occur inside strings.
func escapeForYAML(js []byte) []byte {
	var out []byte
	for i := 0; i < len(js); {
		r, size := utf8.DecodeRune(js[i:])
		if r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0xfffe || r == 0xffff {
			if out == nil {
				out = append(make([]byte, 0, len(js)+16), js[:i]...)
			}
			out = fmt.Appendf(out, `\u%04x`, r)
		} else if out != nil {
			out = append(out, js[i:i+size]...)
		}
		i += size
	}
	if out == nil {
		return js
	}
	return out
}

// header is what a document says about itself, read leniently so that
// errors can name the object before strict decoding.
type header struct {
	apiVersion, kind, name string
	hasAPIVersion, hasKind bool
}

// describe names the object for an error: `IPPool "rack-0"`, with
// fallbackKind when the document names no kind.
func (h header) describe(fallbackKind string) string {
	kind := h.kind
	if kind == "" {
		kind = fallbackKind
	}
	switch {
	case kind != "" && h.name != "":
		return fmt.Sprintf("%s %q", kind, h.name)
	case kind != "":
		return kind
	case h.name != "":
		return strconv.Quote(h.name)
	}
	return ""
}

// withObject appends the object's description to a document label:
// `document 2 (IPPool "rack-0")`.
func withObject(label string, h header) string {
	if d := h.describe(""); d != "" {
		return label + " (" + d + ")"
	}
	return label
}

func peekHeader(js []byte) (header, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(js, &top); err != nil {
		return header{}, fmt.Errorf("expected an object with apiVersion, kind, metadata and spec, got %s", describeJSON(js))
	}
	var h header
	if raw, ok := top["apiVersion"]; ok && string(raw) != "null" {
		h.hasAPIVersion = true
		if json.Unmarshal(raw, &h.apiVersion) != nil {
			return h, fmt.Errorf("apiVersion: expected a string, got %s", describeJSON(raw))
		}
	}
	if raw, ok := top["kind"]; ok && string(raw) != "null" {
		h.hasKind = true
		if json.Unmarshal(raw, &h.kind) != nil {
			return h, fmt.Errorf("kind: expected a string, got %s", describeJSON(raw))
		}
	}
	var meta map[string]json.RawMessage
	if json.Unmarshal(top["metadata"], &meta) == nil {
		_ = json.Unmarshal(meta["name"], &h.name) // strict decoding reports a bad name
	}
	return h, nil
}

// describeJSON says what kind of JSON value js is, for an error.
func describeJSON(js []byte) string {
	t := bytes.TrimSpace(js)
	if len(t) == 0 {
		return "nothing"
	}
	switch t[0] {
	case '{':
		return "an object"
	case '[':
		return "a list"
	case '"':
		return "a string " + truncate(string(t), 40)
	case 't', 'f':
		return string(t)
	case 'n':
		return "null"
	}
	return "the number " + truncate(string(t), 40)
}

func checkAPIVersion(v string) error {
	switch v {
	case GroupVersion, CalicoGroupVersion:
		return nil
	case "":
		return fmt.Errorf("apiVersion is missing: set apiVersion: %s", GroupVersion)
	}
	return fmt.Errorf("apiVersion %q is not supported: rhizome resources use %s (%s is accepted for Calico YAML)",
		v, GroupVersion, CalicoGroupVersion)
}

// decodeDocument decodes one document: an object or a list of objects.
func decodeDocument(js []byte, label string) ([]Object, error) {
	h, err := peekHeader(js)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	if itemKind, ok := listKind(h.kind); ok {
		return decodeList(js, h, itemKind, label)
	}
	obj, err := decodeObject(js, h)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", withObject(label, h), err)
	}
	return []Object{obj}, nil
}

// decodeObject strictly decodes one resource whose header is h.
func decodeObject(js []byte, h header) (Object, error) {
	if h.kind == "" {
		return nil, fmt.Errorf("kind is missing: set kind to one of %s", kindNames(Kinds()))
	}
	if err := checkAPIVersion(h.apiVersion); err != nil {
		return nil, err
	}
	obj, err := New(h.kind)
	if err != nil {
		if k, lerr := LookupKind(h.kind); lerr == nil {
			return nil, fmt.Errorf("unknown kind %q: did you mean %s?", h.kind, k.Kind)
		}
		return nil, err
	}
	if err := checkStrict(js, reflect.TypeOf(obj).Elem()); err != nil {
		return nil, addPlacementHint(err, reflect.TypeOf(obj).Elem())
	}
	if err := json.Unmarshal(js, obj); err != nil {
		return nil, err
	}
	*obj.GetTypeMeta() = TypeMeta{APIVersion: GroupVersion, Kind: h.kind}
	return obj, nil
}

// listKind reports whether kind is a list: "List" (items name their own
// kind, itemKind is "") or a typed list such as Calico's "IPPoolList".
func listKind(kind string) (itemKind string, ok bool) {
	if kind == "List" {
		return "", true
	}
	base, found := strings.CutSuffix(kind, "List")
	if !found {
		return "", false
	}
	if _, err := New(base); err != nil {
		return "", false
	}
	return base, true
}

// listDocument is a list of objects as kubectl and calicoctl print them.
type listDocument struct {
	APIVersion string            `json:"apiVersion,omitempty"`
	Kind       string            `json:"kind"`
	Metadata   json.RawMessage   `json:"metadata,omitempty"`
	Items      []json.RawMessage `json:"items"`
}

func decodeList(js []byte, h header, itemKind, label string) ([]Object, error) {
	if itemKind == "" {
		switch h.apiVersion {
		case "", "v1", GroupVersion, CalicoGroupVersion:
		default:
			return nil, fmt.Errorf("%s (%s): apiVersion %q is not supported for a List: use v1", label, h.kind, h.apiVersion)
		}
	} else if err := checkAPIVersion(h.apiVersion); err != nil {
		return nil, fmt.Errorf("%s (%s): %w", label, h.kind, err)
	}
	if err := checkStrict(js, reflect.TypeFor[listDocument]()); err != nil {
		return nil, fmt.Errorf("%s (%s): %w", label, h.kind, err)
	}
	var list listDocument
	if err := json.Unmarshal(js, &list); err != nil {
		return nil, fmt.Errorf("%s (%s): %w", label, h.kind, err)
	}
	var (
		objs []Object
		errs []error
	)
	for i, item := range list.Items {
		itemLabel := fmt.Sprintf("%s, item %d", label, i+1)
		ih, err := peekHeader(item)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", itemLabel, err))
			continue
		}
		if _, nested := listKind(ih.kind); nested {
			errs = append(errs, fmt.Errorf("%s (%s): a list cannot contain lists", itemLabel, ih.kind))
			continue
		}
		if itemKind != "" {
			if !ih.hasKind {
				ih.kind = itemKind
			} else if ih.kind != itemKind {
				errs = append(errs, fmt.Errorf("%s: kind %s in the %s, which holds %s objects only", withObject(itemLabel, ih), ih.kind, h.kind, itemKind))
				continue
			}
			if !ih.hasAPIVersion {
				ih.apiVersion = h.apiVersion
			}
		}
		obj, err := decodeObject(item, ih)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", withObject(itemLabel, ih), err))
			continue
		}
		objs = append(objs, obj)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return objs, nil
}

// isNilObject reports whether obj is nil or a nil pointer.
func isNilObject(obj Object) bool {
	if obj == nil {
		return true
	}
	v := reflect.ValueOf(obj)
	return v.Kind() == reflect.Pointer && v.IsNil()
}
