package cluster

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/pflag"
	ctrlapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	ctrloptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
)

// DefaultControllers is the subset of kube-controller-manager the tests need:
//   - garbage collection (ownerReferences cascades, foreground/background);
//   - namespace deletion;
//   - the "default" ServiceAccount and the kube-root-ca.crt ConfigMap of
//     every namespace (pods and projected tokens depend on them);
//   - workloads, so a Helm chart's Deployment/Job/StatefulSet creates pods.
var DefaultControllers = []string{
	"garbage-collector-controller",
	"namespace-controller",
	"serviceaccount-controller",
	"root-ca-certificate-publisher-controller",
	"deployment-controller",
	"replicaset-controller",
	"statefulset-controller",
	"job-controller",
	"ttl-after-finished-controller",
}

// RunControllers runs kube-controller-manager with only the given
// controllers, talking to the apiserver through kubeconfig, until ctx ends.
func RunControllers(ctx context.Context, kubeconfig, caFile, saKeyFile string, controllers []string) error {
	s, err := ctrloptions.NewKubeControllerManagerOptions()
	if err != nil {
		return err
	}
	known := ctrlapp.KnownControllers()
	disabled := ctrlapp.ControllersDisabledByDefault()
	aliases := ctrlapp.ControllerAliases()

	fs := pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError)
	named := s.Flags(known, disabled, aliases)
	s.ParsedFlags = &named
	for _, set := range named.FlagSets {
		fs.AddFlagSet(set)
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--authentication-kubeconfig=" + kubeconfig,
		"--authorization-kubeconfig=" + kubeconfig,
		"--controllers=" + strings.Join(controllers, ","),
		"--leader-elect=false",
		"--secure-port=0", // no metrics/health endpoint: avoids port clashes
		"--root-ca-file=" + caFile,
		"--service-account-private-key-file=" + saKeyFile,
		"--use-service-account-credentials=false",
		"--concurrent-gc-syncs=5",
	}
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("kube-controller-manager flags: %w", err)
	}
	if err := s.Validate(known, disabled, aliases); err != nil {
		return fmt.Errorf("kube-controller-manager options: %w", err)
	}
	c, err := s.Config(known, disabled, aliases)
	if err != nil {
		return fmt.Errorf("kube-controller-manager config: %w", err)
	}
	return ctrlapp.Run(ctx, c.Complete())
}
