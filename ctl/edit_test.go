package ctl_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// editor writes a shell script that rhizomectl edit runs as the editor. The
// script sees the file as $1, the rhizomectl binary as $RZ and a scratch
// directory as $DIR, and counts its calls in $DIR/count, saving what each
// call was shown as $DIR/shown-N. rhizomectl's TMPDIR is $DIR/tmp.
func editor(t *testing.T, c *cli, body string) (env []string, dir string) {
	t.Helper()
	dir = t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "editor.sh")
	text := "#!/bin/sh\nset -e\nn=$(($(cat \"$DIR/count\" 2>/dev/null || echo 0) + 1))\necho $n > \"$DIR/count\"\ncp \"$1\" \"$DIR/shown-$n\"\n" + body + "\n"
	if err := os.WriteFile(script, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
	return []string{"RHIZOME_EDITOR=" + script, "DIR=" + dir, "RZ=" + c.bin, "RHIZOME_ETCD_ENDPOINTS=" + c.endpoints,
		"TMPDIR=" + filepath.Join(dir, "tmp")}, dir
}

func (c *cli) edit(env []string, args ...string) result {
	c.t.Helper()
	return c.runEnv(env, "", append([]string{"edit"}, args...)...)
}

// Seed 004 changes the pool's IPIP mode with kubectl edit; rhizomectl edit
// does the same against etcd.
func TestEditChangesThePool(t *testing.T) {
	c := newCLI(t)
	c.ok(defaultPool, "apply", "-f", "-")
	env, dir := editor(t, c, `sed -i 's/ipipMode: Always/ipipMode: CrossSubnet/' "$1"`)
	r := c.edit(env, "ippool", "default-ipv4-ippool")
	if r.code != 0 || r.stdout != "ippool/default-ipv4-ippool edited\n" {
		t.Fatalf("edit: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if y := c.ok("", "get", "ippool", "default-ipv4-ippool", "-o", "yaml"); !strings.Contains(y, "ipipMode: CrossSubnet") || !strings.Contains(y, "natOutgoing: true") {
		t.Errorf("after the edit the pool is:\n%s", y)
	}
	shown, err := os.ReadFile(filepath.Join(dir, "shown-1"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(shown), "# Please edit the object below.") || !strings.Contains(string(shown), "\nkind: IPPool\n") {
		t.Errorf("the editor was shown:\n%s", shown)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "tmp", "*")); len(left) != 0 {
		t.Errorf("edit left files behind: %v", left)
	}
}

func TestEditWithoutChangesWritesNothing(t *testing.T) {
	c := newCLI(t)
	c.ok(defaultPool, "apply", "-f", "-")
	before := c.ok("", "get", "ippool", "default-ipv4-ippool", "-o", "yaml")
	env, _ := editor(t, c, "true")
	r := c.edit(env, "ippool", "default-ipv4-ippool")
	if r.code != 0 || r.stdout != "" || r.stderr != "Edit cancelled, no changes made.\n" {
		t.Fatalf("edit: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	wantOutput(t, "the pool after a cancelled edit", c.ok("", "get", "ippool", "default-ipv4-ippool", "-o", "yaml"), before)
}

// A file that does not validate comes back with the error on top; the
// second save, fixed, is written.
func TestEditReopensWithTheError(t *testing.T) {
	c := newCLI(t)
	c.ok(defaultPool, "apply", "-f", "-")
	env, dir := editor(t, c, `if [ $n = 1 ]; then sed -i 's/ipipMode: Always/ipipMode: Sometimes/' "$1"; else sed -i 's/ipipMode: Sometimes/ipipMode: Never/' "$1"; fi`)
	r := c.edit(env, "ippool", "default-ipv4-ippool")
	if r.code != 0 || r.stdout != "ippool/default-ipv4-ippool edited\n" {
		t.Fatalf("edit: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	second, err := os.ReadFile(filepath.Join(dir, "shown-2"))
	if err != nil {
		t.Fatalf("the editor was not reopened after an invalid save: %v", err)
	}
	var errLine string
	for _, l := range strings.Split(string(second), "\n") {
		if strings.HasPrefix(l, "# ") && strings.Contains(l, "spec.ipipMode") {
			errLine = l
		}
	}
	if errLine == "" || !strings.Contains(string(second), "ipipMode: Sometimes") {
		t.Errorf("the reopened file should name spec.ipipMode in a comment and keep the user's text:\n%s", second)
	}
	if y := c.ok("", "get", "ippool", "default-ipv4-ippool", "-o", "yaml"); !strings.Contains(y, "ipipMode: Never") {
		t.Errorf("after the fixed save the pool is:\n%s", y)
	}
}

// Giving up on an invalid file (saving it unchanged) writes nothing and
// keeps the user's text.
func TestEditGivingUpKeepsTheFile(t *testing.T) {
	c := newCLI(t)
	c.ok(defaultPool, "apply", "-f", "-")
	env, _ := editor(t, c, `if [ $n = 1 ]; then sed -i 's|cidr: 192.168.0.0/16|cidr: 10.0.0.0/8|' "$1"; fi`)
	r := c.edit(env, "ippool", "default-ipv4-ippool")
	if r.code != 1 || !strings.Contains(r.stderr, "not saved") || !strings.Contains(r.stderr, "spec.cidr") || !strings.Contains(r.stderr, "your changes are in ") {
		t.Fatalf("edit: exit %d\nstderr: %s", r.code, r.stderr)
	}
	path := strings.TrimSpace(r.stderr[strings.LastIndex(r.stderr, "your changes are in ")+len("your changes are in "):])
	t.Cleanup(func() { os.Remove(path) })
	if kept, err := os.ReadFile(path); err != nil || !strings.Contains(string(kept), "cidr: 10.0.0.0/8") {
		t.Errorf("kept file %s: %v\n%s", path, err, kept)
	}
	if y := c.ok("", "get", "ippool", "default-ipv4-ippool", "-o", "yaml"); !strings.Contains(y, "cidr: 192.168.0.0/16") {
		t.Errorf("the pool changed:\n%s", y)
	}
}

// Someone else's change while the editor is open wins; the edit is kept in
// a file. A change of only a Node's status (the agent's heartbeat) does not
// get in the way.
func TestEditConflicts(t *testing.T) {
	c := newCLI(t)
	c.ok(defaultPool, "apply", "-f", "-")
	env, _ := editor(t, c, `"$RZ" patch ippool default-ipv4-ippool -p '{"spec":{"natOutgoing":false}}' >/dev/null
sed -i 's/ipipMode: Always/ipipMode: Never/' "$1"`)
	r := c.edit(env, "ippool", "default-ipv4-ippool")
	if r.code != 1 || !strings.Contains(r.stderr, "was changed since it was read") || !strings.Contains(r.stderr, "your changes are in ") {
		t.Fatalf("edit: exit %d\nstderr: %s", r.code, r.stderr)
	}
	os.Remove(strings.TrimSpace(r.stderr[strings.LastIndex(r.stderr, "your changes are in ")+len("your changes are in "):]))
	if y := c.ok("", "get", "ippool", "default-ipv4-ippool", "-o", "yaml"); !strings.Contains(y, "ipipMode: Always") || strings.Contains(y, "natOutgoing: true") {
		t.Errorf("the other change should stand and the edit not:\n%s", y)
	}

	node := "apiVersion: rhizome.io/v1\nkind: Node\nmetadata:\n  name: node-1\nspec:\n  bgp:\n    ipv4Address: 10.0.0.1/24\n"
	c.ok(node, "apply", "-f", "-")
	c.ok(node+"status:\n  ipsInUse: 3\n", "replace", "-f", "-")
	env, _ = editor(t, c, `"$RZ" replace -f - >/dev/null <<EOF
`+node+`status:
  ipsInUse: 7
EOF
sed -i 's|ipv4Address: 10.0.0.1/24|ipv4Address: 10.0.0.9/24|' "$1"`)
	r = c.edit(env, "node", "node-1")
	if r.code != 0 || r.stdout != "node/node-1 edited\n" {
		t.Fatalf("edit of a node whose status changed meanwhile: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if y := c.ok("", "get", "node", "node-1", "-o", "yaml"); !strings.Contains(y, "ipv4Address: 10.0.0.9/24") || !strings.Contains(y, "ipsInUse: 7") {
		t.Errorf("the node should have the edited address and the newer status:\n%s", y)
	}
}
