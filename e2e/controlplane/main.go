// Command cpctl runs a real Kubernetes control plane for mongoferry's
// end-to-end tests in one process: embedded etcd, kube-apiserver, a few
// kube-controller-manager controllers (garbage collector first of all) and
// a pod runner that plays the node. See README.md.
//
//	cpctl serve [flags]                 run until SIGTERM/SIGINT
//	cpctl logs [--state-dir D] NS/POD [CONTAINER] [--previous]
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "logs":
		err = logs(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cpctl:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: cpctl serve [flags] | cpctl logs [--state-dir DIR] [--previous] NS/POD [CONTAINER]")
	os.Exit(2)
}
