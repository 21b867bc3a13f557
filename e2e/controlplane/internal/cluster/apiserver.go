package cluster

import (
	"context"
	"fmt"
	"strconv"

	"github.com/spf13/pflag"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/rest"
	apiapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apioptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"

	"mongoferry.io/e2e/controlplane/internal/pki"
)

// APIServerConfig is what the embedded kube-apiserver needs to know.
type APIServerConfig struct {
	Port       int    // secure port on 127.0.0.1
	EtcdURL    string // embedded etcd client URL
	PKI        pki.Files
	ExtraFlags []string // appended last, e.g. --feature-gates=...
}

// Args returns the kube-apiserver command line used for the test cluster.
func (c APIServerConfig) Args() []string {
	f := c.PKI
	args := []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(c.Port),
		"--etcd-servers=" + c.EtcdURL,
		"--tls-cert-file=" + f.ServingCert,
		"--tls-private-key-file=" + f.ServingKey,
		"--client-ca-file=" + f.CACert,
		// Service-account tokens: legacy verification key plus the signing
		// key/issuer that enable the TokenRequest API and projected tokens.
		"--service-account-key-file=" + f.SAPub,
		"--service-account-signing-key-file=" + f.SAKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--api-audiences=https://kubernetes.default.svc.cluster.local",
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
		// The pod runner plays the kubelet: the apiserver reaches it for
		// `kubectl logs` on the node's InternalIP and daemon endpoint port.
		"--kubelet-client-certificate=" + f.KubeletClientCrt,
		"--kubelet-client-key=" + f.KubeletClientKey,
		"--kubelet-certificate-authority=" + f.CACert,
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		// Single-node, no kube-proxy: keep the endpoint reconciler out of
		// the way of the missing Service network.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
		"--enable-priority-and-fairness=false",
		"--v=0",
	}
	return append(args, c.ExtraFlags...)
}

// RunAPIServer parses the flags and runs kube-apiserver until ctx ends.
func RunAPIServer(ctx context.Context, c APIServerConfig) error {
	s := apioptions.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, set := range s.Flags().FlagSets {
		fs.AddFlagSet(set)
	}
	if err := fs.Parse(c.Args()); err != nil {
		return fmt.Errorf("kube-apiserver flags: %w", err)
	}
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	// Loopback clients inside the apiserver should not print warnings.
	rest.SetDefaultWarningHandler(rest.NoWarnings{})

	completed, err := s.Complete(ctx)
	if err != nil {
		return fmt.Errorf("kube-apiserver options: %w", err)
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return fmt.Errorf("kube-apiserver options: %w", utilerrors.NewAggregate(errs))
	}
	return apiapp.Run(ctx, completed)
}
