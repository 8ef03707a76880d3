package daemon

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/rhizome-net/rhizome/api"
	"github.com/rhizome-net/rhizome/bgp"
)

// passwords resolves BGP password sources: a file on the node, or a key of
// a Kubernetes Secret in the agent's namespace (with Kubernetes only:
// client nil means without).
func passwords(namespace string, client kubernetes.Interface) bgp.PasswordResolver {
	return func(src api.SecretSource) (string, error) {
		switch {
		case src.File != "":
			b, err := os.ReadFile(src.File)
			if err != nil {
				return "", fmt.Errorf("password file: %w", err)
			}
			return strings.TrimRight(string(b), "\r\n"), nil
		case src.SecretKeyRef != nil:
			ref := src.SecretKeyRef
			if client == nil {
				return "", fmt.Errorf("password from Secret %s/%s: rhizome-node runs without Kubernetes; use a file", namespace, ref.Name)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s, err := client.CoreV1().Secrets(namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			if err != nil {
				return "", fmt.Errorf("password from Secret %s/%s: %w", namespace, ref.Name, err)
			}
			v, ok := s.Data[ref.Key]
			if !ok {
				return "", fmt.Errorf("password from Secret %s/%s: no key %q", namespace, ref.Name, ref.Key)
			}
			return string(v), nil
		}
		return "", fmt.Errorf("password source names neither a file nor a Secret")
	}
}
