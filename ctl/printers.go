package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/datastore"
)

func validOutput(o string) bool {
	switch o {
	case "", "wide", "yaml", "json":
		return true
	}
	return false
}

// print writes objs in the requested format. A single named object prints
// as itself in yaml/json; anything else as a List.
func (o *Options) print(ctx context.Context, res *datastore.Resources, kind string, objs []api.Object, output string, single bool) error {
	switch output {
	case "yaml", "json":
		var doc any
		if single {
			doc = objs[0]
		} else {
			doc = map[string]any{"apiVersion": api.GroupVersion, "kind": "List", "items": objs}
		}
		for _, obj := range objs {
			api.SetDefaults(obj) // apiVersion and kind on every item
		}
		var out []byte
		var err error
		if output == "json" {
			out, err = json.MarshalIndent(doc, "", "  ")
			out = append(out, '\n')
		} else {
			out, err = yaml.Marshal(doc)
		}
		if err != nil {
			return err
		}
		_, err = o.streams.Out.Write(out)
		return err
	}
	t, err := table(ctx, res, kind, objs, output == "wide")
	if err != nil {
		return err
	}
	return t.write(o.streams.Out)
}

// tableData is a header and rows of cells.
type tableData struct {
	header []string
	rows   [][]string
}

// write aligns columns like kubectl: three spaces between columns.
func (t tableData) write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
	fmt.Fprintln(tw, strings.Join(t.header, "\t"))
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

func table(ctx context.Context, res *datastore.Resources, kind string, objs []api.Object, wide bool) (tableData, error) {
	switch kind {
	case api.KindIPPool:
		return poolTable(objs, wide), nil
	case api.KindIPReservation:
		return reservationTable(objs), nil
	case api.KindBGPConfiguration:
		return bgpConfigTable(objs, wide), nil
	case api.KindBGPPeer:
		return peerTable(objs, wide), nil
	case api.KindNode:
		global, err := getBGPConfig(ctx, res, "default")
		if err != nil {
			return tableData{}, err
		}
		return nodeTable(objs, global, wide), nil
	}
	return tableData{}, fmt.Errorf("no table format for kind %s", kind)
}

func poolTable(objs []api.Object, wide bool) tableData {
	t := tableData{header: []string{"NAME", "CIDR", "SELECTOR"}}
	if wide {
		t.header = []string{"NAME", "CIDR", "BLOCKSIZE", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT", "SELECTOR"}
	}
	for _, obj := range objs {
		p := obj.(*api.IPPool)
		s := p.Spec
		if !wide {
			t.rows = append(t.rows, []string{p.Name, s.CIDR, s.NodeSelector})
			continue
		}
		t.rows = append(t.rows, []string{p.Name, s.CIDR, strconv.Itoa(s.BlockSize),
			strconv.FormatBool(s.NATOutgoing), string(s.IPIPMode), string(s.VXLANMode),
			strconv.FormatBool(s.Disabled), strconv.FormatBool(s.DisableBGPExport), s.NodeSelector})
	}
	return t
}

func reservationTable(objs []api.Object) tableData {
	t := tableData{header: []string{"NAME", "RESERVED"}}
	for _, obj := range objs {
		r := obj.(*api.IPReservation)
		t.rows = append(t.rows, []string{r.Name, strings.Join(r.Spec.ReservedCIDRs, ",")})
	}
	return t
}

func bgpConfigTable(objs []api.Object, wide bool) tableData {
	t := tableData{header: []string{"NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"}}
	if wide {
		t.header = append(t.header, "LISTENPORT", "RRCLUSTERID", "GRACEFULRESTART")
	}
	for _, obj := range objs {
		c := obj.(*api.BGPConfiguration)
		s := c.Spec
		row := []string{c.Name, orDash(s.LogSeverity), boolOrDash(s.NodeToNodeMeshEnabled), asOrDash(s.ASNumber)}
		if wide {
			row = append(row, intOrDash(s.ListenPort), orDash(s.RouteReflectorClusterID), intOrDash(s.GracefulRestartSeconds))
		}
		t.rows = append(t.rows, row)
	}
	return t
}

func peerTable(objs []api.Object, wide bool) tableData {
	t := tableData{header: []string{"NAME", "PEERIP", "NODE", "ASN"}}
	if wide {
		t.header = append(t.header, "PEERSELECTOR", "PASSIVE", "NEXTHOP")
	}
	for _, obj := range objs {
		p := obj.(*api.BGPPeer)
		s := p.Spec
		node := s.Node
		switch {
		case node == "" && s.NodeSelector != "":
			node = "(" + s.NodeSelector + ")"
		case node == "":
			node = "(global)"
		}
		peer := s.PeerIP
		if s.PeerSelector != "" {
			peer = "(" + s.PeerSelector + ")"
		}
		asn := asOrDash(s.ASNumber)
		if s.PeerSelector != "" && s.ASNumber == nil {
			asn = "(node)"
		}
		row := []string{p.Name, peer, node, asn}
		if wide {
			row = append(row, orDash(s.PeerSelector), strconv.FormatBool(s.Passive), string(s.NextHopMode))
		}
		t.rows = append(t.rows, row)
	}
	return t
}

// nodeTable shows the per-node BGP identity and, in wide form, the IPAM and
// BGP state the agent reports. An AS number in parentheses is inherited from
// the BGPConfiguration, as calicoctl shows it.
func nodeTable(objs []api.Object, global *api.BGPConfiguration, wide bool) tableData {
	t := tableData{header: []string{"NAME"}}
	if wide {
		t.header = []string{"NAME", "ASN", "IPV4", "RRCLUSTERID", "BLOCKS", "IPSINUSE", "IPSFREE", "PEERSUP", "HEARTBEAT"}
	}
	defaultAS := api.EffectiveBGP(global, nil).ASNumber
	for _, obj := range objs {
		n := obj.(*api.Node)
		if !wide {
			t.rows = append(t.rows, []string{n.Name})
			continue
		}
		asn := "(" + defaultAS.String() + ")"
		var ipv4, rr string
		if b := n.Spec.BGP; b != nil {
			if b.ASNumber != nil {
				asn = b.ASNumber.String()
			}
			ipv4, rr = b.IPv4Address, b.RouteReflectorClusterID
		}
		blocks, inUse, free, peers, beat := "-", "-", "-", "-", "-"
		if s := n.Status; s != nil {
			blocks = strconv.Itoa(len(s.Blocks))
			inUse, free = strconv.Itoa(s.IPsInUse), strconv.Itoa(s.IPsFree)
			peers = fmt.Sprintf("%d/%d", s.BGPPeersUp, s.BGPPeers)
			beat = orDash(s.LastHeartbeat)
		}
		t.rows = append(t.rows, []string{n.Name, asn, orDash(ipv4), orDash(rr), blocks, inUse, free, peers, beat})
	}
	return t
}

func getBGPConfig(ctx context.Context, res *datastore.Resources, name string) (*api.BGPConfiguration, error) {
	obj, err := res.Get(ctx, api.KindBGPConfiguration, name)
	if errors.Is(err, datastore.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return obj.(*api.BGPConfiguration), nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func intOrDash(i int) string {
	if i == 0 {
		return "-"
	}
	return strconv.Itoa(i)
}

func boolOrDash(b *bool) string {
	if b == nil {
		return "-"
	}
	return strconv.FormatBool(*b)
}

func asOrDash(a *api.ASNumber) string {
	if a == nil {
		return "-"
	}
	return a.String()
}
