package datastore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// MergePatch applies a JSON merge patch (RFC 7386) to the JSON document doc:
// objects merge key by key, null deletes a key, anything else replaces.
func MergePatch(doc, patch []byte) ([]byte, error) {
	var p any
	if err := json.Unmarshal(patch, &p); err != nil {
		if bytes.ContainsAny(patch, "“”‘’") {
			// Copied from a web page or a word processor.
			return nil, fmt.Errorf("the patch is not valid JSON: it has typographic quotes (“ ”), use plain double quotes (\"): %w", err)
		}
		return nil, fmt.Errorf("the patch is not valid JSON: %w", err)
	}
	if _, ok := p.(map[string]any); !ok {
		return nil, errors.New(`the patch must be a JSON object, for example '{"spec":{"disabled":true}}'`)
	}
	var d any
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("stored document is not valid JSON: %w", err)
	}
	return json.Marshal(mergeValue(d, p))
}

func mergeValue(doc, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	dm, ok := doc.(map[string]any)
	if !ok {
		dm = map[string]any{}
	}
	for k, v := range pm {
		if v == nil {
			delete(dm, k)
			continue
		}
		dm[k] = mergeValue(dm[k], v)
	}
	return dm
}
