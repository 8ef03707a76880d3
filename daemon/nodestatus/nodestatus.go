// Package nodestatus is the node agent's status report: what its status
// API serves at /status and what `rhizomectl node status` prints. It
// depends on nothing but the standard library and api, so the CLI stays
// small.
package nodestatus

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/rhizome-net/rhizome/api"
)

// Path is where the agent's status server serves the report.
const Path = "/status"

// Report is the agent's view of its node.
type Report struct {
	Node    string    `json:"node"`
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	// Networking is "bgp" (speaker and dataplane run), "vxlan" (the
	// dataplane with routes from the datastore, no speaker) or "none"
	// (IPAM and CNI only).
	Networking string `json:"networking"`
	// Address is the node's IPv4 address with its subnet.
	Address  string `json:"address"`
	AS       uint32 `json:"as,omitempty"`
	RouterID string `json:"routerID,omitempty"`
	// ClusterID is set when the node is a route reflector.
	ClusterID string `json:"clusterID,omitempty"`
	// BGPError says why the speaker does not run, when it does not.
	BGPError string `json:"bgpError,omitempty"`
	Peers    []Peer `json:"peers"`
	// Advertised are the prefixes the node originates.
	Advertised []string `json:"advertised"`
	// Learned counts the best paths learned from peers.
	Learned int `json:"learned"`
	// Routes is the last sync of the kernel routes; nil without a dataplane.
	Routes *Routes `json:"routes,omitempty"`
	// TunnelAddress is the node's IPIP tunnel address, if it has one.
	TunnelAddress string `json:"tunnelAddress,omitempty"`
	// VXLANTunnelAddress is the address of the node's vxlan.rhizome, if
	// it has one.
	VXLANTunnelAddress string              `json:"vxlanTunnelAddress,omitempty"`
	Conditions         []api.NodeCondition `json:"conditions,omitempty"`
}

// Peer is one BGP session.
type Peer struct {
	Address netip.Addr `json:"address"`
	Port    uint16     `json:"port"`
	AS      uint32     `json:"as"`
	// Type: node-to-node mesh, route reflector, route reflector client,
	// global or node specific.
	Type  string `json:"type"`
	Node  string `json:"node,omitempty"`
	State string `json:"state"`
	// Since is when the session entered State.
	Since time.Time `json:"since,omitzero"`
	// Info is "Established", or why the session is not.
	Info               string `json:"info,omitempty"`
	PrefixesReceived   uint64 `json:"prefixesReceived"`
	PrefixesAccepted   uint64 `json:"prefixesAccepted"`
	PrefixesAdvertised uint64 `json:"prefixesAdvertised"`
	Flaps              uint32 `json:"flaps"`
}

// Routes is what the route reconciler last did and saw.
type Routes struct {
	// Programmed is false while a starting agent waits for BGP to settle:
	// until then routes are added but none is deleted.
	Programmed bool      `json:"programmed"`
	LastSync   time.Time `json:"lastSync,omitzero"`
	Installed  int       `json:"installed"`
	// Unroutable are learned prefixes not installed, with the reason.
	Unroutable []string `json:"unroutable,omitempty"`
	// Conflicts are routes of other protocols for prefixes rhizome wants,
	// left alone.
	Conflicts []string `json:"conflicts,omitempty"`
	Errors    []string `json:"errors,omitempty"`
}

// Fetch reads the report from the agent's status address (host:port).
func Fetch(ctx context.Context, addr string) (*Report, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+Path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("rhizome-node is not running here, or not at status address %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("status from rhizome-node at %s: %s: %s", addr, resp.Status, strings.TrimSpace(string(b)))
	}
	var r Report
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("status from rhizome-node at %s: %w", addr, err)
	}
	return &r, nil
}

// WriteText prints the report the way operators of calicoctl know it: the
// agent line, then one peer table per address family. wide adds the AS,
// the node behind each peer and the prefix counts.
func (r *Report) WriteText(w io.Writer, wide bool) error {
	var b strings.Builder
	b.WriteString("rhizome-node is running.\n")
	if r.Networking == "none" {
		b.WriteString("\nBGP is off on this node (networking: none).\n")
		_, err := io.WriteString(w, b.String())
		return err
	}
	if r.Networking == "vxlan" {
		b.WriteString("\nBGP is off on this node (networking: vxlan): routes come from the datastore.\n")
	} else {
		r.writePeers(&b, wide)
	}
	if rt := r.Routes; rt != nil && (len(rt.Unroutable) > 0 || len(rt.Conflicts) > 0 || len(rt.Errors) > 0) {
		b.WriteString("\nRoutes needing attention\n")
		for _, s := range rt.Unroutable {
			b.WriteString("  not installed: " + s + "\n")
		}
		for _, s := range rt.Conflicts {
			b.WriteString("  left alone: " + s + "\n")
		}
		for _, s := range rt.Errors {
			b.WriteString("  error: " + s + "\n")
		}
	}
	for _, c := range r.Conditions {
		if c.Status != "False" {
			fmt.Fprintf(&b, "\nCondition %s: %s\n", c.Type, c.Message)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writePeers prints the BGP error, if any, and one peer table per
// address family.
func (r *Report) writePeers(b *strings.Builder, wide bool) {
	if r.BGPError != "" {
		fmt.Fprintf(b, "\nBGP is not running: %s\n", r.BGPError)
	}
	for _, fam := range []struct {
		name string
		is4  bool
	}{{"IPv4", true}, {"IPv6", false}} {
		var rows []Peer
		for _, p := range r.Peers {
			if p.Address.Unmap().Is4() == fam.is4 {
				rows = append(rows, p)
			}
		}
		if len(rows) == 0 {
			fmt.Fprintf(b, "\nNo %s peers found.\n", fam.name)
			continue
		}
		fmt.Fprintf(b, "\n%s BGP status\n", fam.name)
		head := []string{"PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"}
		if wide {
			head = append(head, "AS", "NODE", "RECEIVED", "ACCEPTED", "ADVERTISED", "FLAPS")
		}
		table := [][]string{head}
		for _, p := range rows {
			row := []string{p.Address.String(), p.Type, stateWord(p.State), since(p.Since), p.Info}
			if wide {
				row = append(row, fmt.Sprint(p.AS), orDash(p.Node), fmt.Sprint(p.PrefixesReceived),
					fmt.Sprint(p.PrefixesAccepted), fmt.Sprint(p.PrefixesAdvertised), fmt.Sprint(p.Flaps))
			}
			table = append(table, row)
		}
		writeTable(b, table)
	}
}

// stateWord is the session state as BIRD-based tools print it: "up" when
// established, else the state in lower case.
func stateWord(s string) string {
	if s == "Established" {
		return "up"
	}
	return strings.ToLower(s)
}

func since(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("15:04:05")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// writeTable draws a bordered table like calicoctl node status does.
func writeTable(b *strings.Builder, rows [][]string) {
	widths := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], len(c))
		}
	}
	rule := "+"
	for _, w := range widths {
		rule += strings.Repeat("-", w+2) + "+"
	}
	line := func(r []string) {
		b.WriteString("|")
		for i, c := range r {
			b.WriteString(" " + c + strings.Repeat(" ", widths[i]-len(c)) + " |")
		}
		b.WriteString("\n")
	}
	b.WriteString(rule + "\n")
	line(rows[0])
	b.WriteString(rule + "\n")
	for _, r := range rows[1:] {
		line(r)
	}
	b.WriteString(rule + "\n")
}
