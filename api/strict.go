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
)

// checkStrict reads the JSON value in data against the Go type t the way
// encoding/json would decode it, and reports, with the path of the field
// ("spec.cidrr"), what encoding/json would silently accept or report
// without a path: unknown fields (names must match the json tag exactly,
// not case-insensitively), duplicate keys, values of the wrong type, and
// numbers that do not fit. Types that implement json.Unmarshaler are
// checked by calling their UnmarshalJSON. A nil error means json.Unmarshal
// into a value of type t succeeds and drops nothing.
func checkStrict(data []byte, t reflect.Type) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := walkValue(dec, t, ""); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		if err != nil {
			return syntaxError(err)
		}
		return errors.New("unexpected data after the object")
	}
	return nil
}

// unknownFieldError reports a key the Go type has no field for.
type unknownFieldError struct {
	path   string // full path, "spec.cidrr"
	key    string // "cidrr"
	parent string // path of the object holding it, "spec" ("" at the top)
	hint   string // added by callers that know more
}

func (e *unknownFieldError) Error() string {
	msg := fmt.Sprintf("unknown field %q", e.path)
	if e.hint != "" {
		msg += ": " + e.hint
	}
	return msg
}

var jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()

func walkValue(dec *json.Decoder, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(jsonUnmarshalerType) {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return syntaxError(err)
		}
		if string(raw) == "null" {
			return nil
		}
		v := reflect.New(t).Interface().(json.Unmarshaler)
		if err := v.UnmarshalJSON(raw); err != nil {
			return fieldError(path, err.Error())
		}
		return nil
	}
	tok, err := dec.Token()
	if err != nil {
		return syntaxError(err)
	}
	if tok == nil { // null leaves the Go value as it is, for every type
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		if tok != json.Delim('{') {
			return typeError(path, "an object", tok)
		}
		fields := jsonFields(t)
		return walkObject(dec, path, func(key string) (reflect.Type, bool) {
			ft, ok := fields[key]
			return ft, ok
		})
	case reflect.Map:
		if tok != json.Delim('{') {
			return typeError(path, "an object", tok)
		}
		if t.Key().Kind() != reflect.String {
			return fmt.Errorf("%s: cannot decode a map with %s keys", displayPath(path), t.Key())
		}
		return walkObject(dec, path, func(string) (reflect.Type, bool) { return t.Elem(), true })
	case reflect.Slice, reflect.Array:
		if tok != json.Delim('[') {
			return typeError(path, "a list", tok)
		}
		for i := 0; dec.More(); i++ {
			if t.Kind() == reflect.Array && i >= t.Len() {
				return fmt.Errorf("%s: at most %d entries", displayPath(path), t.Len())
			}
			if err := walkValue(dec, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		_, err := dec.Token() // ']'
		return syntaxError(err)
	case reflect.String:
		if _, ok := tok.(string); !ok {
			return typeError(path, "a string", tok)
		}
	case reflect.Bool:
		if _, ok := tok.(bool); !ok {
			return typeError(path, "true or false", tok)
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := tok.(json.Number)
		if !ok {
			return typeError(path, "a whole number", tok)
		}
		if _, err := strconv.ParseInt(string(n), 10, t.Bits()); err != nil {
			return numberError(path, n, err)
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := tok.(json.Number)
		if !ok {
			return typeError(path, "a whole number", tok)
		}
		if _, err := strconv.ParseUint(string(n), 10, t.Bits()); err != nil {
			return numberError(path, n, err)
		}
	case reflect.Float32, reflect.Float64:
		n, ok := tok.(json.Number)
		if !ok {
			return typeError(path, "a number", tok)
		}
		if _, err := strconv.ParseFloat(string(n), t.Bits()); err != nil {
			return numberError(path, n, err)
		}
	case reflect.Interface:
		return skipRest(dec, tok)
	default:
		return fmt.Errorf("%s: cannot decode into %s", displayPath(path), t)
	}
	return nil
}

// walkObject reads the members of an object whose '{' has been read. elem
// gives the Go type of a member's value, or false for an unknown key.
func walkObject(dec *json.Decoder, path string, elem func(key string) (reflect.Type, bool)) error {
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return syntaxError(err)
		}
		key, _ := tok.(string)
		p := joinPath(path, key)
		if seen[key] {
			return fmt.Errorf("duplicate field %q", p)
		}
		seen[key] = true
		t, ok := elem(key)
		if !ok {
			return &unknownFieldError{path: p, key: key, parent: path}
		}
		if err := walkValue(dec, t, p); err != nil {
			return err
		}
	}
	_, err := dec.Token() // '}'
	return syntaxError(err)
}

// skipRest consumes the rest of a value whose first token was tok.
func skipRest(dec *json.Decoder, tok json.Token) error {
	if d, ok := tok.(json.Delim); !ok || (d != '{' && d != '[') {
		return nil
	}
	for depth := 1; depth > 0; {
		tok, err := dec.Token()
		if err != nil {
			return syntaxError(err)
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
	}
	return nil
}

// addPlacementHint explains an unknown top-level field of a resource that
// is a field of one of its parts (metadata, spec, status): YAML whose
// indentation got lost on the way from a web page looks like that.
func addPlacementHint(err error, t reflect.Type) error {
	var uf *unknownFieldError
	if !errors.As(err, &uf) || uf.parent != "" {
		return err
	}
	for name, ft := range jsonFields(t) {
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() != reflect.Struct {
			continue
		}
		if _, ok := jsonFields(ft)[uf.key]; ok {
			uf.hint = fmt.Sprintf("it belongs under %s (was the indentation lost?)", name)
			return uf
		}
	}
	return err
}

// jsonFields maps the JSON names of t's fields to their types, the way
// encoding/json sees them: embedded structs without a name are flattened,
// "-" and unexported fields are skipped.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := make(map[string]reflect.Type)
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		ft := f.Type
		if f.Anonymous && name == "" {
			et := ft
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				for n, typ := range jsonFields(et) {
					if _, dup := fields[n]; !dup {
						fields[n] = typ
					}
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = ft
	}
	return fields
}

func joinPath(path, key string) string {
	if isPlainKey(key) {
		if path == "" {
			return key
		}
		return path + "." + key
	}
	return path + "[" + strconv.Quote(key) + "]"
}

// isPlainKey reports whether key can be written after a dot in a field
// path: letters, digits and '_' only.
func isPlainKey(key string) bool {
	if key == "" {
		return false
	}
	for _, r := range key {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

func displayPath(path string) string {
	if path == "" {
		return "the document"
	}
	return path
}

func fieldError(path, msg string) error {
	return fmt.Errorf("%s: %s", displayPath(path), msg)
}

func typeError(path, want string, got json.Token) error {
	msg := fmt.Sprintf("%s: expected %s, got %s", displayPath(path), want, describeToken(got))
	if want == "a string" {
		switch got.(type) {
		case json.Number:
			msg += fmt.Sprintf(": quote it (\"%v\")", got)
		case bool:
			msg += fmt.Sprintf(": quote it (\"%v\"); YAML reads yes/no/on/off/y/n as booleans", got)
		}
	}
	return errors.New(msg)
}

func numberError(path string, n json.Number, err error) error {
	if errors.Is(err, strconv.ErrRange) {
		return fmt.Errorf("%s: number %s is out of range", displayPath(path), truncate(string(n), 40))
	}
	return fmt.Errorf("%s: expected a whole number, got %s", displayPath(path), truncate(string(n), 40))
}

func describeToken(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '{' {
			return "an object"
		}
		return "a list"
	case string:
		return fmt.Sprintf("the string %q", truncate(v, 40))
	case json.Number:
		return "the number " + truncate(string(v), 40)
	case bool:
		return strconv.FormatBool(v)
	}
	return fmt.Sprint(tok)
}

// syntaxError turns a JSON syntax error into a readable one; nil stays nil.
func syntaxError(err error) error {
	if err == nil {
		return nil
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("invalid JSON at byte %d: %v", se.Offset, se)
	}
	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("invalid JSON: unexpected end of input")
	}
	return fmt.Errorf("invalid JSON: %w", err)
}
