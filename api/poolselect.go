package api

import "k8s.io/apimachinery/pkg/labels"

// SelectsNode says whether the pool's nodeSelector selects a node with
// these labels; a selector that does not parse selects nothing.
func (p *IPPool) SelectsNode(nodeLabels map[string]string) bool {
	sel, err := ParseSelector(p.Spec.NodeSelector)
	return err == nil && sel.Matches(labels.Set(nodeLabels))
}
