package ipam

import (
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/rhizome-net/rhizome/api"
)

// The IPAM history is checked against a sequential model of "address →
// owner handle" with porcupine. The model is partitioned by address: every
// operation becomes one step in the partition of each address it says
// something about, so each partition is a small history over one address.
// (A history whose projections are all linearizable can still hide a
// violation that spans addresses; a violation found in a projection is
// always real.)
//
// Operations whose outcome is unknown (a timeout, a cancellation, a stopped
// allocator) return at "infinity" and may or may not take effect, as in
// etcd's robustness tests: the model steps nondeterministically.

type linStep int

const (
	linAssign         linStep = iota // the address became the handle's; it was free
	linMaybeAssign                   // unknown assign: if free, the handle may have taken it
	linInUse                         // refused: the address was held by owner
	linRelease                       // the handle's release freed the address (it held it)
	linNotReleased                   // the handle's release did not free it (it did not hold it)
	linMaybeRelease                  // unknown release: if the handle held it, it may be free now
	linReleaseIP                     // operator release freed it from owner
	linMaybeReleaseIP                // unknown operator release: it may be free now
	linRead                          // after the run: the store shows owner ("" = free)
)

type linInput struct {
	addr   netip.Addr
	step   linStep
	handle string // the handle acting, or the owner observed
}

func (in linInput) String() string {
	names := [...]string{"assign", "maybe-assign", "in-use", "release", "not-released", "maybe-release",
		"operator-release", "maybe-operator-release", "read"}
	return fmt.Sprintf("%s %s %q", names[in.step], in.addr, in.handle)
}

// linModel: the state of one partition is the owner of its address.
var linModel = porcupine.NondeterministicModel{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[netip.Addr][]porcupine.Operation{}
		var keys []netip.Addr
		for _, op := range history {
			a := op.Input.(linInput).addr
			if _, ok := by[a]; !ok {
				keys = append(keys, a)
			}
			by[a] = append(by[a], op)
		}
		sort.Slice(keys, func(i, j int) bool { return keys[i].Less(keys[j]) })
		out := make([][]porcupine.Operation, len(keys))
		for i, k := range keys {
			out[i] = by[k]
		}
		return out
	},
	Init: func() []any { return []any{""} },
	Step: func(state, input, _ any) []any {
		owner, in := state.(string), input.(linInput)
		switch in.step {
		case linAssign:
			if owner == "" {
				return []any{in.handle}
			}
		case linMaybeAssign:
			if owner == "" {
				return []any{"", in.handle}
			}
			return []any{owner}
		case linInUse, linRead:
			if owner == in.handle {
				return []any{owner}
			}
		case linRelease, linReleaseIP:
			if owner == in.handle && owner != "" {
				return []any{""}
			}
		case linNotReleased:
			if owner != in.handle {
				return []any{owner}
			}
		case linMaybeRelease:
			if owner == in.handle {
				return []any{owner, ""}
			}
			return []any{owner}
		case linMaybeReleaseIP:
			if owner == "" {
				return []any{""}
			}
			return []any{owner, ""}
		}
		return nil
	},
	DescribeOperation: func(input, _ any) string { return input.(linInput).String() },
	DescribeState: func(state any) string {
		if state.(string) == "" {
			return "free"
		}
		return state.(string)
	},
}

// linHistory projects the history onto addresses. final is the owner of
// every allocated address read from the store after the run, at time end.
func linHistory(hist []histOp, final map[netip.Addr]Attribute, end int64) []porcupine.Operation {
	var out []porcupine.Operation
	add := func(op histOp, a netip.Addr, step linStep, handle string) {
		out = append(out, porcupine.Operation{ClientId: max(op.client+1, 0), Input: linInput{a, step, handle}, Call: op.call, Return: op.ret})
	}
	// relevant[a] holds the handles that something observed at a; only
	// their handle-wide operations (unknown automatic assignments,
	// releases) are projected onto a.
	relevant := map[netip.Addr]map[string]bool{}
	note := func(a netip.Addr, h string) {
		if relevant[a] == nil {
			relevant[a] = map[string]bool{}
		}
		if h != "" {
			relevant[a][h] = true
		}
	}
	for _, op := range hist {
		switch {
		case (op.kind == kAssign || op.kind == kAssignIP) && op.out == acked:
			for _, a := range op.addrs {
				add(op, a, linAssign, op.handle)
				note(a, op.handle)
			}
		case op.kind == kAssignIP && op.out == unknown:
			add(op, op.addr, linMaybeAssign, op.handle)
			note(op.addr, op.handle)
		case op.kind == kAssignIP && op.reason == "in use":
			add(op, op.addr, linInUse, op.owner)
			note(op.addr, op.owner)
		case op.kind == kRelease && op.out == acked:
			for _, a := range op.addrs {
				add(op, a, linRelease, op.handle)
				note(a, op.handle)
			}
		case op.kind == kReleaseIP && op.out == acked && len(op.addrs) > 0:
			add(op, op.addr, linReleaseIP, op.owner)
			note(op.addr, op.owner)
		case op.kind == kReleaseIP && op.out == acked:
			add(op, op.addr, linRead, "") // it was free
			note(op.addr, "")
		case op.kind == kReleaseIP && op.out == unknown:
			add(op, op.addr, linMaybeReleaseIP, "")
			note(op.addr, "")
		}
	}
	for a, attr := range final {
		note(a, attr.Handle)
	}
	byHandle := map[string][]histOp{}
	for _, op := range hist {
		if op.kind == kAssign && op.out == unknown || op.kind == kRelease {
			byHandle[op.handle] = append(byHandle[op.handle], op)
		}
	}
	for a, hs := range relevant {
		read := histOp{client: -1, call: end, ret: end}
		add(read, a, linRead, final[a].Handle)
		for h := range hs {
			for _, op := range byHandle[h] {
				switch {
				case op.kind == kAssign:
					add(op, a, linMaybeAssign, h)
				case op.out == unknown:
					add(op, a, linMaybeRelease, h)
				case op.out == acked && !containsAddr(op.addrs, a):
					add(op, a, linNotReleased, h)
				}
			}
		}
	}
	return out
}

func containsAddr(as []netip.Addr, a netip.Addr) bool {
	for _, x := range as {
		if x == a {
			return true
		}
	}
	return false
}

// checkLinearizable checks the run's history with porcupine and, on a
// violation, writes porcupine's visualization and names it.
func (r *chaosRun) checkLinearizable(st *storeState, timeout time.Duration) {
	r.t.Helper()
	ops := linHistory(r.history, st.owner, r.now())
	model := linModel.ToModel()
	start := time.Now()
	res, info := porcupine.CheckOperationsVerbose(model, ops, timeout)
	r.t.Logf("porcupine: %d projected operations over %d addresses: %s in %s",
		len(ops), len(model.Partition(ops)), res, time.Since(start).Round(time.Millisecond))
	switch res {
	case porcupine.Ok:
	case porcupine.Unknown:
		r.t.Errorf("porcupine could not decide within %s", timeout)
	default:
		path := filepath.Join(os.TempDir(), fmt.Sprintf("rhizome-%s-%d.html", sanitize(r.t.Name()), time.Now().UnixNano()))
		if err := porcupine.VisualizePath(model, info, path); err != nil {
			r.t.Logf("visualize: %v", err)
		}
		r.t.Errorf("the IPAM history is not linearizable; porcupine's visualization: %s", path)
		r.logViolation(model, ops)
	}
}

// logViolation logs the operations of the first few addresses whose
// history is not linearizable, so a failure can be read without the
// visualization.
func (r *chaosRun) logViolation(model porcupine.Model, ops []porcupine.Operation) {
	single := model
	single.Partition = nil
	shown := 0
	for _, part := range model.Partition(ops) {
		if shown == 3 {
			return
		}
		if porcupine.CheckOperations(single, part) {
			continue
		}
		shown++
		sort.Slice(part, func(i, j int) bool { return part[i].Call < part[j].Call })
		r.t.Logf("not linearizable: %s", part[0].Input.(linInput).addr)
		for _, op := range part {
			ret := "∞"
			if op.Return != math.MaxInt64 {
				ret = time.Duration(op.Return).String()
			}
			r.t.Logf("  client %2d  %12s .. %-12s %s", op.ClientId-1, time.Duration(op.Call), ret, op.Input)
		}
	}
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '-'
		}
	}
	return string(b)
}

// TestChaosLinearizable runs a shorter chaos history with heavy contention
// on a few fixed addresses that lie in the nodes' affine blocks, and an
// operator who frees them now and then, and checks it for linearizability.
// Affine blocks are cached by their nodes: a node's cached block goes stale
// whenever another node or the operator writes it, which is what this test
// is after.
func TestChaosLinearizable(t *testing.T) {
	cfg := chaosConfig{
		pools:            []*api.IPPool{newTestPool("lin", "10.20.0.0/20", 26)},
		config:           Config{MaxBlocksPerNode: 20, AutoAllocateBlocks: true},
		nodes:            10,
		perNode:          2,
		ops:              4000,
		maxLive:          6,
		fixedFrac:        0.35,
		operatorEvery:    15 * time.Millisecond,
		chaosMin:         150 * time.Millisecond,
		chaosMax:         700 * time.Millisecond,
		allocRestartFrac: 0.3,
		seed:             uint64(time.Now().UnixNano()),
	}
	if testing.Short() {
		cfg.ops = 1500
	}
	t.Logf("seed %d", cfg.seed)
	r := startChaosRun(t, cfg)
	r.warmUp()
	r.run()
	r.report("linearizability run")
	st := readStoreState(t, r.admin)
	r.checkLinearizable(st, 2*time.Minute)
}
