package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
)

// editHeader starts the file the editor opens, as kubectl edit's does.
const editHeader = `# Please edit the object below. Lines beginning with a '#' will be ignored,
# and an empty file will abort the edit. If an error occurs while saving this file will be
# reopened with the relevant failures.
#
`

func newEditCommand(o *Options) *cobra.Command {
	return &cobra.Command{
		Use:   "edit KIND NAME",
		Short: "Edit a resource in your editor and save it back",
		Long: `Edit a resource in your editor and save it back, as kubectl edit does.

The editor is RHIZOME_EDITOR, else KUBE_EDITOR, else EDITOR, else vi. The
object is saved when the editor exits with a changed file; an empty or
unchanged file cancels the edit. A file that does not decode or validate is
reopened with the errors at the top. A Node's status is the agent's and is
not written back. If someone else changed the resource meanwhile, nothing
is written and the edited file is kept for you.`,
		Example: `  rhizomectl edit ippool default-ipv4-ippool
  RHIZOME_EDITOR=nano rhizomectl edit bgpconfiguration default`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			info, err := api.LookupKind(args[0])
			if err != nil {
				return err
			}
			res, err := o.resources()
			if err != nil {
				return err
			}
			obj, err := o.edit(context.Background(), res, info.Kind, args[1])
			if err != nil || obj == nil {
				return err
			}
			fmt.Fprintf(o.streams.Out, "%s edited\n", ref(obj))
			return nil
		},
	}
}

// edit runs the editor until the file saves, is cancelled or the user
// gives up on an error. It returns nil without an error when cancelled.
func (o *Options) edit(ctx context.Context, res *datastore.Resources, kind, name string) (api.Object, error) {
	orig, err := res.Get(ctx, kind, name)
	if err != nil {
		return nil, err
	}
	api.SetDefaults(orig)
	body, err := yaml.Marshal(orig)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref(orig), err)
	}
	f, err := os.CreateTemp("", "rhizomectl-edit-*.yaml")
	if err != nil {
		return nil, fmt.Errorf("file to edit %s in: %w", ref(orig), err)
	}
	path := f.Name()
	f.Close()
	keep := false
	defer func() {
		if !keep {
			os.Remove(path)
		}
	}()

	shown, problem := body, error(nil)
	for {
		text := editHeader
		if problem != nil {
			text += "# " + strings.ReplaceAll(oneLine(problem), "; ", "\n# ") + "\n#\n"
		}
		if err := os.WriteFile(path, append([]byte(text), shown...), 0o600); err != nil {
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
		if err := o.runEditor(path); err != nil {
			return nil, err
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read the edited file %s: %w", path, err)
		}
		edited := stripComments(raw)
		switch {
		case len(bytes.TrimSpace(edited)) == 0:
			fmt.Fprintln(o.streams.Err, "Edit cancelled, saved file was empty.")
			return nil, nil
		case bytes.Equal(edited, stripComments(shown)) && problem == nil:
			fmt.Fprintln(o.streams.Err, "Edit cancelled, no changes made.")
			return nil, nil
		case bytes.Equal(edited, stripComments(shown)):
			keep = true
			return nil, fmt.Errorf("edit of %s not saved: %w; your changes are in %s", ref(orig), problem, path)
		}
		obj, err := o.saveEdited(ctx, res, orig, edited)
		if err == nil {
			return obj, nil
		}
		if errors.Is(err, datastore.ErrConflict) {
			keep = true
			return nil, fmt.Errorf("%w; your changes are in %s: run rhizomectl edit again and make them once more", err, path)
		}
		// Reopen with the error on top and the user's text below.
		shown, problem = edited, err
	}
}

// saveEdited decodes, checks and writes the edited text of orig. A
// conflict only with the agent's status of a Node is retried at the new
// version; any other change by someone else is a conflict.
func (o *Options) saveEdited(ctx context.Context, res *datastore.Resources, orig api.Object, edited []byte) (api.Object, error) {
	objs, err := api.Decode(edited)
	if err != nil {
		return nil, err
	}
	if len(objs) != 1 {
		return nil, fmt.Errorf("the file holds %d objects: edit the one %s only", len(objs), ref(orig))
	}
	obj := objs[0]
	if ref(obj) != ref(orig) {
		return nil, fmt.Errorf("the file holds %s, not %s: the kind and metadata.name cannot be edited (create a new resource and delete this one)", ref(obj), ref(orig))
	}
	api.SetDefaults(obj)
	if err := api.Validate(obj); err != nil {
		return nil, err
	}
	if n, ok := obj.(*api.Node); ok {
		n.Status = nil // the agent's: Update keeps the stored one
	}
	saved, err := res.Update(ctx, obj)
	if !errors.Is(err, datastore.ErrConflict) {
		return saved, err
	}
	cur, gerr := res.Get(ctx, orig.GetTypeMeta().Kind, orig.GetObjectMeta().Name)
	if gerr != nil || !sameButStatus(orig, cur) {
		return nil, err
	}
	obj.GetObjectMeta().ResourceVersion = cur.GetObjectMeta().ResourceVersion
	return res.Update(ctx, obj)
}

// sameButStatus says whether a and b differ at most in their version and
// a Node's status (which the agent rewrites every heartbeat).
func sameButStatus(a, b api.Object) bool {
	strip := func(o api.Object) (map[string]any, bool) {
		raw, err := json.Marshal(o)
		var m map[string]any
		if err != nil || json.Unmarshal(raw, &m) != nil {
			return nil, false
		}
		if meta, ok := m["metadata"].(map[string]any); ok {
			delete(meta, "resourceVersion")
		}
		if _, node := o.(*api.Node); node {
			delete(m, "status")
		}
		return m, true
	}
	ma, oka := strip(a)
	mb, okb := strip(b)
	return oka && okb && reflect.DeepEqual(ma, mb)
}

// runEditor opens path in the user's editor, with the terminal.
func (o *Options) runEditor(path string) error {
	editor := "vi"
	for _, v := range []string{"RHIZOME_EDITOR", "KUBE_EDITOR", "EDITOR"} {
		if e := strings.TrimSpace(os.Getenv(v)); e != "" {
			editor = e
			break
		}
	}
	// Through the shell, so EDITOR may carry arguments ("code --wait").
	cmd := exec.Command("/bin/sh", "-c", editor+` "$1"`, "sh", path)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = o.streams.In, o.streams.Out, o.streams.Err
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("editor %q: %w: nothing was saved (set RHIZOME_EDITOR or EDITOR)", editor, err)
	}
	return nil
}

// stripComments drops the lines that start with '#'.
func stripComments(b []byte) []byte {
	var out [][]byte
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimLeft(line, " \t"), []byte("#")) {
			out = append(out, line)
		}
	}
	return bytes.Join(out, nil)
}
