package ctl

import (
	"bytes"
	"testing"
)

// TestVersion: `rhizomectl version` and `--version` print the stamped version and exit 0 without
// reaching a datastore (the endpoint given answers nothing).
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"--etcd-endpoints", "http://127.0.0.1:1", "version"}} {
		var out, errOut bytes.Buffer
		code := Main(args, Streams{In: &bytes.Buffer{}, Out: &out, Err: &errOut}, WithVersion("v1.2.3-4-gabcdef0"))
		if code != 0 || out.String() != "rhizomectl version v1.2.3-4-gabcdef0\n" || errOut.Len() != 0 {
			t.Errorf("rhizomectl %v: exit %d, stdout %q, stderr %q; want 0 and \"rhizomectl version v1.2.3-4-gabcdef0\\n\"",
				args, code, out.String(), errOut.String())
		}
	}
	var out bytes.Buffer
	if code := Main([]string{"version"}, Streams{In: &bytes.Buffer{}, Out: &out, Err: &out}); code != 0 || out.String() != "rhizomectl version dev\n" {
		t.Errorf("unstamped rhizomectl version: exit %d, output %q; want \"rhizomectl version dev\\n\"", code, out.String())
	}
}
