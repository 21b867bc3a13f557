package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"mongoferry.io/e2e/controlplane/internal/cluster"
	"mongoferry.io/e2e/controlplane/internal/pki"
	"mongoferry.io/e2e/controlplane/internal/podrunner"
)

// serve starts etcd, the apiserver, the controllers and the pod runner,
// writes <state>/kubeconfig and, once everything answers, <state>/ready.
func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	stateDir := fs.String("state-dir", defaultStateDir(), "directory for PKI, etcd data, kubeconfig, pods")
	port := fs.Int("port", 0, "apiserver port on 127.0.0.1 (0 = a free one)")
	nodeName := fs.String("node-name", "mongoferry-test-node", "name of the node played by the pod runner")
	images := podrunner.ImageMap{}
	fs.Var(images, "image", "REPO=/path/image.oci.tar: images whose repository is or ends with /REPO come from this OCI archive (repeatable)")
	passEnv := fs.String("pass-env", "RUST_BACKTRACE,RUST_LOG", "host variables passed to every container")
	controllers := fs.String("controllers", strings.Join(cluster.DefaultControllers, ","), "kube-controller-manager controllers to run")
	noPods := fs.Bool("no-pod-runner", false, "do not run the pod runner")
	klog.InitFlags(fs) // -v=N and friends
	if err := fs.Parse(args); err != nil {
		return err
	}
	dir, err := filepath.Abs(*stateDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(dir, "ready"))

	files, err := pki.Ensure(filepath.Join(dir, "pki"))
	if err != nil {
		return err
	}
	ports, err := loadPorts(dir, *port)
	if err != nil {
		return err
	}

	etcd, etcdURL, err := cluster.StartEtcd(dir, ports.EtcdClient, ports.EtcdPeer)
	if err != nil {
		return err
	}
	defer etcd.Close()

	// One context per layer, so they stop in reverse order.
	apiCtx, stopAPI := context.WithCancel(context.Background())
	defer stopAPI()
	errs := make(chan error, 3)
	go func() {
		errs <- fmt.Errorf("kube-apiserver: %w", cluster.RunAPIServer(apiCtx, cluster.APIServerConfig{Port: ports.APIServer, EtcdURL: etcdURL, PKI: files}))
	}()

	server := fmt.Sprintf("https://127.0.0.1:%d", ports.APIServer)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := cluster.WriteCertKubeconfig(kubeconfig, server, files.CACert, files.AdminCert, files.AdminKey); err != nil {
		return err
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	restCfg.QPS, restCfg.Burst = 100, 200
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	if err := cluster.WaitReady(client, errs, 2*time.Minute); err != nil {
		return err
	}

	go func() {
		errs <- fmt.Errorf("kube-controller-manager: %w", cluster.RunControllers(apiCtx, kubeconfig, files.CACert, files.SAKey, strings.Split(*controllers, ",")))
	}()

	podCtx, stopPods := context.WithCancel(context.Background())
	defer stopPods()
	podsDone := make(chan struct{})
	if *noPods {
		close(podsDone)
	} else {
		runner, err := podrunner.New(podrunner.Config{
			NodeName:    *nodeName,
			StateDir:    dir,
			Images:      images,
			APIPort:     ports.APIServer,
			CAFile:      files.CACert,
			KubeletPort: ports.Kubelet,
			KubeletCert: files.KubeletCert,
			KubeletKey:  files.KubeletKey,
			PassEnv:     strings.Split(*passEnv, ","),
		}, client)
		if err != nil {
			return err
		}
		go func() {
			defer close(podsDone)
			if err := runner.Run(podCtx); err != nil {
				errs <- fmt.Errorf("pod runner: %w", err)
			}
		}()
	}

	if err := cluster.WaitUsable(client, *nodeName, !*noPods, errs, 2*time.Minute); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ready"), []byte(server+"\n"), 0o644); err != nil {
		return err
	}
	klog.InfoS("control plane ready", "server", server, "kubeconfig", kubeconfig)

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	var runErr error
	select {
	case s := <-sigs:
		klog.InfoS("stopping", "signal", s)
	case runErr = <-errs:
		klog.ErrorS(runErr, "component failed, stopping")
	}
	_ = os.Remove(filepath.Join(dir, "ready"))
	// Containers first (they may still talk to the apiserver), then the
	// apiserver and controllers, then etcd (deferred).
	stopPods()
	select {
	case <-podsDone:
	case <-time.After(15 * time.Second):
	}
	stopAPI()
	time.Sleep(500 * time.Millisecond)
	return runErr
}

// defaultStateDir is <dir of the cpctl binary>/../.state, that is
// e2e/controlplane/.state for the binary built in e2e/controlplane/.build.
func defaultStateDir() string {
	exe, err := os.Executable()
	if err != nil {
		return ".state"
	}
	return filepath.Join(filepath.Dir(filepath.Dir(exe)), ".state")
}
