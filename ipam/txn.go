package ipam

import (
	"context"

	"github.com/rhizome-net/rhizome/datastore"
)

// writeTogether is the one place IPAM relies on multi-key transactions
// (datastore.Store.Txn with several keys, and OpPrefixUnchangedSince): every
// write of more than one record goes through it, and says which of the
// reasons below it is. On etcd it is one Txn.
//
// What a backend without multi-key transactions (the Kubernetes API, which
// only compares-and-swaps one object on its resourceVersion) must do
// instead, per reason:
//
//   - txnAllocation (plan.commit): blocks + handle records of one batch
//     (ReleaseNodeAffinities adds the delete of the node's affinity). Make the block the only record an allocation
//     writes: the block carries its attributes already, so handles become
//     an index derived from the blocks (a label or field selector on the
//     block objects, or an in-memory index fed by a watch), not records of
//     their own; a batch is then one compare-and-swap per block, and a
//     crash between two blocks leaves two valid blocks.
//   - txnClaim (claimBlock): create the block and confirm the affinity.
//     Make the affinity a label of the block object: one create of the
//     block (fails if it exists) is the whole claim; "blocks of node X" is
//     a label-selector list. No pending state is needed.
//   - txnRelease (releaseBlock): delete an empty block and its affinity. With the affinity on the block, one delete
//     guarded by the block's resourceVersion (it is still empty).
//   - txnRepair (Repair): a fix guarded by "no block changed since the
//     check" (OpPrefixUnchangedSince). Guard on the one object written
//     instead (its resourceVersion from the check); a fix based on a block
//     that changed since is then caught by checking again, as today when a
//     guard fails.
//   - txnImport (ImportBlocks): batches of creates. One create per block.
//
// Issue 14 redesigns the records this way; until then the etcd backend
// keeps the transactions, and this list is the inventory to replace.
func writeTogether(ctx context.Context, store datastore.Transactor, _ txnReason, ops ...datastore.Op) (int64, error) {
	return store.Txn(ctx, ops...)
}

// txnReason says why a write needs several records changed atomically (see
// writeTogether).
type txnReason int

const (
	txnAllocation txnReason = iota + 1
	txnClaim
	txnRelease
	txnRepair
	txnImport
)
