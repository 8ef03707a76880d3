package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// ASNumber is a BGP autonomous system number (RFC 6793: 32 bits).
//
// On input it is a JSON number (64512), a decimal string ("64514", as
// Calico users write in patches) or asdot notation ("1.10" = 1*65536+10).
// On output it is always a plain JSON number.
type ASNumber uint32

// NewASNumber returns a pointer to n, for the optional ASNumber fields.
func NewASNumber(n uint32) *ASNumber {
	a := ASNumber(n)
	return &a
}

// String returns the AS number in decimal ("asplain").
func (a ASNumber) String() string { return strconv.FormatUint(uint64(a), 10) }

// MarshalJSON writes the AS number as a plain JSON number.
func (a ASNumber) MarshalJSON() ([]byte, error) {
	return strconv.AppendUint(nil, uint64(a), 10), nil
}

// UnmarshalJSON reads a JSON number, a decimal string or an asdot string.
// JSON null leaves the value unchanged.
func (a *ASNumber) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if string(data) == "null" {
		return nil
	}
	if len(data) > 0 && data[0] == '"' {
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return fmt.Errorf("AS number %s is not a valid JSON string: %w", data, err)
		}
		n, err := ParseASNumber(s)
		if err != nil {
			return err
		}
		*a = n
		return nil
	}
	s := string(data)
	if len(data) == 0 || !(data[0] == '-' || (data[0] >= '0' && data[0] <= '9')) {
		return fmt.Errorf("AS number %s must be a number (64512) or a string (\"64512\", asdot \"1.10\")", truncate(s, 40))
	}
	if strings.ContainsAny(s, ".eE") {
		// A YAML value like 1.10 arrives here as the JSON number 1.1, so the
		// asdot reading would be ambiguous.
		return fmt.Errorf("AS number %s is not a whole number: write asdot notation as a quoted string (\"1.10\")", truncate(s, 40))
	}
	n, err := parseASPlain(s)
	if err != nil {
		return err
	}
	*a = n
	return nil
}

// ParseASNumber parses an AS number written in decimal ("64512") or asdot
// notation ("1.10" = 1*65536+10).
func ParseASNumber(s string) (ASNumber, error) {
	t := strings.TrimSpace(s)
	if hi, lo, ok := strings.Cut(t, "."); ok {
		h, errH := parseUint16Part(hi)
		l, errL := parseUint16Part(lo)
		if errH != nil || errL != nil {
			return 0, fmt.Errorf("AS number %q is not valid asdot notation: both parts must be whole numbers 0-65535 (\"1.10\")", truncate(s, 40))
		}
		return ASNumber(uint32(h)<<16 | uint32(l)), nil
	}
	return parseASPlain(t)
}

func parseASPlain(s string) (ASNumber, error) {
	if s == "" {
		return 0, fmt.Errorf("AS number is empty: use a number 1-4294967295 (64512) or asdot notation (\"1.10\")")
	}
	if !isDigits(strings.TrimPrefix(s, "-")) {
		return 0, fmt.Errorf("AS number %q is not a number: use digits (64512) or asdot notation (\"1.10\")", truncate(s, 40))
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("AS number %s out of range 1-4294967295", truncate(s, 40))
	}
	return ASNumber(n), nil
}

func parseUint16Part(s string) (uint16, error) {
	if !isDigits(s) {
		return 0, strconv.ErrSyntax
	}
	n, err := strconv.ParseUint(s, 10, 16)
	return uint16(n), err
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// truncate shortens s for an error message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
