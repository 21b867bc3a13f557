package cluster

import (
	"fmt"
	"os"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// WriteCertKubeconfig writes a kubeconfig that authenticates with a client
// certificate (used for the admin user).
func WriteCertKubeconfig(path, server, caFile, certFile, keyFile string) error {
	return write(path, server, caFile, &clientcmdapi.AuthInfo{
		ClientCertificate: certFile,
		ClientKey:         keyFile,
	})
}

// WriteTokenKubeconfig writes a kubeconfig that authenticates with a bearer
// token read from tokenFile (clients re-read the file, so the token can be
// refreshed in place).
func WriteTokenKubeconfig(path, server, caFile, tokenFile, namespace string) error {
	cfg := config(server, caFile, &clientcmdapi.AuthInfo{TokenFile: tokenFile})
	cfg.Contexts["default"].Namespace = namespace
	return clientcmd.WriteToFile(*cfg, path)
}

func write(path, server, caFile string, auth *clientcmdapi.AuthInfo) error {
	if err := clientcmd.WriteToFile(*config(server, caFile, auth), path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return os.Chmod(path, 0o600)
}

func config(server, caFile string, auth *clientcmdapi.AuthInfo) *clientcmdapi.Config {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["mongoferry-test"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caFile}
	cfg.AuthInfos["user"] = auth
	cfg.Contexts["default"] = &clientcmdapi.Context{Cluster: "mongoferry-test", AuthInfo: "user", Namespace: "default"}
	cfg.CurrentContext = "default"
	return cfg
}
