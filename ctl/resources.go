package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
)

// fileFlags is the -f flag of the commands that read resources.
type fileFlags struct {
	files []string
}

func (f *fileFlags) register(cmd *cobra.Command, required bool) {
	cmd.Flags().StringArrayVarP(&f.files, "filename", "f", nil,
		"file or directory of YAML/JSON resources, or - for standard input (repeatable)")
	if required {
		_ = cmd.MarkFlagRequired("filename")
	}
}

// read decodes, defaults and validates every object of every file. Nothing
// is written when any object is invalid, so a typo in one document cannot
// leave a half-applied file behind.
func (f *fileFlags) read(in io.Reader) ([]api.Object, error) {
	var objs []api.Object
	var problems []string
	for _, name := range f.files {
		paths, err := expandPath(name)
		if err != nil {
			return nil, err
		}
		for _, p := range paths {
			data, err := readSource(p, in)
			if err != nil {
				return nil, err
			}
			decoded, err := api.Decode(data)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %s", p, oneLine(err)))
				continue
			}
			for _, obj := range decoded {
				api.SetDefaults(obj)
				if err := api.Validate(obj); err != nil {
					problems = append(problems, fmt.Sprintf("%s: %s", p, oneLine(err)))
					continue
				}
				objs = append(objs, obj)
			}
		}
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("nothing was written: %s", strings.Join(problems, "; "))
	}
	if len(objs) == 0 {
		return nil, fmt.Errorf("no resources found in %s", strings.Join(f.files, ", "))
	}
	return objs, nil
}

func expandPath(name string) ([]string, error) {
	if name == "-" {
		return []string{"-"}, nil
	}
	st, err := os.Stat(name)
	if err != nil {
		return nil, err
	}
	if !st.IsDir() {
		return []string{name}, nil
	}
	var paths []string
	for _, pat := range []string{"*.yaml", "*.yml", "*.json"} {
		m, _ := filepath.Glob(filepath.Join(name, pat))
		paths = append(paths, m...)
	}
	sort.Strings(paths)
	if len(paths) == 0 {
		return nil, fmt.Errorf("directory %s holds no .yaml, .yml or .json files", name)
	}
	return paths, nil
}

func readSource(path string, in io.Reader) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(in)
	}
	return os.ReadFile(path)
}

// ref is how objects are named in command output: ippool/rack-0-ippool.
func ref(obj api.Object) string {
	return refOf(obj.GetTypeMeta().Kind, obj.GetObjectMeta().Name)
}

func refOf(kind, name string) string {
	return strings.ToLower(kind) + "/" + name
}

// forEach writes every object with write, printing "<ref> <verb>" for each
// success and one error line for each failure.
func (o *Options) forEach(objs []api.Object, write func(context.Context, *datastore.Resources, api.Object) (string, error)) error {
	res, err := o.resources()
	if err != nil {
		return err
	}
	failed := 0
	for _, obj := range objs {
		verb, err := write(context.Background(), res, obj)
		if err != nil {
			if len(objs) == 1 {
				return err
			}
			fmt.Fprintf(o.streams.Err, "error: %s: %s\n", ref(obj), oneLine(err))
			failed++
			if errors.Is(err, datastore.ErrUnavailable) {
				return errSome
			}
			continue
		}
		fmt.Fprintf(o.streams.Out, "%s %s\n", ref(obj), verb)
	}
	if failed > 0 {
		return errSome
	}
	return nil
}

// writeFunc writes one object decoded from a file and says what it did.
type writeFunc func(ctx context.Context, r *datastore.Resources, obj api.Object) (verb string, err error)

// newFileWriteCommand is a command that decodes -f files whole, then writes
// each object with write.
func newFileWriteCommand(o *Options, use, short, example string, write writeFunc) *cobra.Command {
	var ff fileFlags
	cmd := &cobra.Command{
		Use:     use,
		Short:   short,
		Example: example,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			objs, err := ff.read(cmd.InOrStdin())
			if err != nil {
				return err
			}
			return o.forEach(objs, write)
		},
	}
	ff.register(cmd, true)
	return cmd
}

func newApplyCommand(o *Options) *cobra.Command {
	return newFileWriteCommand(o, "apply -f FILE", "Create resources, or update them when they exist",
		`  rhizomectl apply -f pools.yaml
  cat pool.yaml | rhizomectl apply -f -`,
		func(ctx context.Context, r *datastore.Resources, obj api.Object) (string, error) {
			_, created, err := r.Apply(ctx, obj)
			if created {
				return "created", err
			}
			return "configured", err
		})
}

func newCreateCommand(o *Options) *cobra.Command {
	return newFileWriteCommand(o, "create -f FILE", "Create resources; fails for those that exist already", "",
		func(ctx context.Context, r *datastore.Resources, obj api.Object) (string, error) {
			_, err := r.Create(ctx, obj)
			return "created", err
		})
}

func newReplaceCommand(o *Options) *cobra.Command {
	return newFileWriteCommand(o, "replace -f FILE", "Replace existing resources (guarded by metadata.resourceVersion when the file has one)", "",
		func(ctx context.Context, r *datastore.Resources, obj api.Object) (string, error) {
			_, err := r.Update(ctx, obj)
			return "replaced", err
		})
}

func newDeleteCommand(o *Options) *cobra.Command {
	var ff fileFlags
	var ignoreNotFound bool
	cmd := &cobra.Command{
		Use:   "delete (KIND NAME... | -f FILE)",
		Short: "Delete resources by kind and name, or those named in a file",
		Example: `  rhizomectl delete ippool default-ipv4-ippool
  rhizomectl delete -f pools.yaml`,
		RunE: func(cmd *cobra.Command, args []string) error {
			var objs []api.Object
			switch {
			case len(ff.files) > 0 && len(args) > 0:
				return errors.New("give either KIND NAME... or -f FILE, not both")
			case len(ff.files) > 0:
				var err error
				if objs, err = ff.read(cmd.InOrStdin()); err != nil {
					return err
				}
			case len(args) >= 2:
				info, err := api.LookupKind(args[0])
				if err != nil {
					return err
				}
				for _, name := range args[1:] {
					obj := info.New()
					obj.GetTypeMeta().Kind = info.Kind
					obj.GetObjectMeta().Name = name
					objs = append(objs, obj)
				}
			default:
				return errors.New("name what to delete: KIND NAME... (for example: delete ippool default-ipv4-ippool) or -f FILE")
			}
			return o.forEach(objs, func(ctx context.Context, r *datastore.Resources, obj api.Object) (string, error) {
				_, err := r.Delete(ctx, obj.GetTypeMeta().Kind, obj.GetObjectMeta().Name, 0)
				if ignoreNotFound && errors.Is(err, datastore.ErrNotFound) {
					return "not found (ignored)", nil
				}
				return "deleted", err
			})
		},
	}
	ff.register(cmd, false)
	cmd.Flags().BoolVar(&ignoreNotFound, "ignore-not-found", false, "succeed for resources that do not exist")
	return cmd
}

func newPatchCommand(o *Options) *cobra.Command {
	var patch string
	cmd := &cobra.Command{
		Use:   "patch KIND NAME -p PATCH",
		Short: "Change fields of a resource with a JSON merge patch",
		Example: `  rhizomectl patch ippool default-ipv4-ippool -p '{"spec":{"disabled":true}}'
  rhizomectl patch node node-1 -p '{"spec":{"bgp":{"asNumber":"64514"}}}'
  rhizomectl patch node rke-node4 -p '{"spec":{"bgp":{"routeReflectorClusterID":"244.0.0.1"}}}'
  rhizomectl patch ipamconfig -p '{"strictAffinity":true,"maxBlocksPerNode":10}'`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if isIPAMConfig(args[0]) {
				return o.patchIPAMConfig(args[1:], patch)
			}
			if len(args) != 2 {
				return fmt.Errorf("patch %s needs the NAME of the resource", args[0])
			}
			info, err := api.LookupKind(args[0])
			if err != nil {
				return err
			}
			res, err := o.resources()
			if err != nil {
				return err
			}
			obj, err := res.Patch(context.Background(), info.Kind, args[1], []byte(patch))
			if err != nil {
				return err
			}
			fmt.Fprintf(o.streams.Out, "%s patched\n", ref(obj))
			return nil
		},
	}
	cmd.Flags().StringVarP(&patch, "patch", "p", "", "JSON merge patch (RFC 7386)")
	_ = cmd.MarkFlagRequired("patch")
	return cmd
}

func newGetCommand(o *Options) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "get KIND [NAME...] [-o wide|yaml|json]",
		Short: "List resources, or show named ones",
		Long: `List resources, or show named ones.

Kinds: ippool (ippools, pool), ipreservation (ipreservations, ipres),
bgpconfiguration (bgpconfig), bgppeer (bgppeers), node (nodes), and
ipamconfig (the one IPAM configuration, named default).`,
		Example: `  rhizomectl get ippool -o wide
  rhizomectl get node kube-node-0 -o yaml`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !validOutput(output) {
				return fmt.Errorf("unknown output format %q: use wide, yaml or json", output)
			}
			if isIPAMConfig(args[0]) {
				return o.getIPAMConfig(args[1:], output)
			}
			info, err := api.LookupKind(args[0])
			if err != nil {
				return err
			}
			res, err := o.resources()
			if err != nil {
				return err
			}
			ctx := context.Background()
			var objs []api.Object
			if len(args) == 1 {
				if objs, _, err = res.List(ctx, info.Kind); err != nil {
					return err
				}
			} else {
				for _, name := range args[1:] {
					obj, err := res.Get(ctx, info.Kind, name)
					if err != nil {
						return err
					}
					objs = append(objs, obj)
				}
			}
			if len(objs) == 0 && (output == "" || output == "wide") {
				fmt.Fprintf(o.streams.Err, "No %s resources found.\n", info.Kind)
				return nil
			}
			return o.print(ctx, res, info.Kind, objs, output, len(args) == 2)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: wide, yaml or json")
	return cmd
}
