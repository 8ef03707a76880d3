package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/rhizome-net/rhizome/datastore"
	"github.com/rhizome-net/rhizome/ipam"
)

// The IPAM configuration is one key, not a resource kind: get and patch
// know it by these names.
func isIPAMConfig(kind string) bool {
	switch strings.ToLower(kind) {
	case "ipamconfig", "ipamconfigs", "ipamconfiguration", "ipamconfigurations":
		return true
	}
	return false
}

// ipamConfigName checks the optional NAME argument: there is one
// configuration, named default.
func ipamConfigName(names []string) error {
	if len(names) > 1 || (len(names) == 1 && names[0] != "default") {
		return fmt.Errorf("there is one ipamconfig, named default (got %s): leave the name out", strings.Join(names, " "))
	}
	return nil
}

func (o *Options) getIPAMConfig(names []string, output string) error {
	if err := ipamConfigName(names); err != nil {
		return err
	}
	store, err := o.kv()
	if err != nil {
		return err
	}
	cfg, err := ipam.ReadConfig(context.Background(), store)
	if err != nil {
		return fmt.Errorf("read ipamconfig: %w", err)
	}
	switch output {
	case "yaml":
		out, _ := yaml.Marshal(cfg)
		_, err = o.streams.Out.Write(out)
		return err
	case "json":
		out, _ := json.MarshalIndent(cfg, "", "  ")
		_, err = o.streams.Out.Write(append(out, '\n'))
		return err
	}
	return tableData{
		header: []string{"STRICTAFFINITY", "MAXBLOCKSPERNODE", "AUTOALLOCATEBLOCKS"},
		rows: [][]string{{strconv.FormatBool(cfg.StrictAffinity), strconv.Itoa(cfg.MaxBlocksPerNode),
			strconv.FormatBool(cfg.AutoAllocateBlocks)}},
	}.write(o.streams.Out)
}

// patchIPAMConfig applies a JSON merge patch to the stored configuration
// (the defaults when none is stored), validates the result strictly and
// writes it guarded by the revision it read, retrying when another writer
// got in between.
func (o *Options) patchIPAMConfig(names []string, patch string) error {
	if err := ipamConfigName(names); err != nil {
		return err
	}
	store, err := o.kv()
	if err != nil {
		return err
	}
	var badPatch bool
	_, err = ipam.PatchConfig(context.Background(), store, func(doc []byte) ([]byte, error) {
		merged, err := datastore.MergePatch(doc, []byte(patch))
		badPatch = err != nil
		return merged, err
	})
	switch {
	case badPatch:
		return fmt.Errorf(`patch ipamconfig: %w`, err)
	case errors.Is(err, ipam.ErrInvalidConfig):
		return fmt.Errorf("patch ipamconfig: %w (fields: strictAffinity true|false, maxBlocksPerNode 0 or more, autoAllocateBlocks true|false)", err)
	case err != nil:
		return fmt.Errorf("write ipamconfig: %w", err)
	}
	fmt.Fprintln(o.streams.Out, "ipamconfig/default patched")
	return nil
}
