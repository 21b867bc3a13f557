package main

import (
	"encoding/json"
	"os"
	"path/filepath"

	"mongoferry.io/e2e/controlplane/internal/cluster"
)

// portSet is the set of local ports of one control plane. It is saved in
// the state directory so a restart on the same state reuses them (etcd
// remembers its peer URL; kubeconfigs remember the apiserver URL).
type portSet struct {
	APIServer  int `json:"apiserver"`
	EtcdClient int `json:"etcdClient"`
	EtcdPeer   int `json:"etcdPeer"`
	Kubelet    int `json:"kubelet"`
}

func loadPorts(dir string, apiPort int) (portSet, error) {
	path := filepath.Join(dir, "ports.json")
	var p portSet
	if data, err := os.ReadFile(path); err == nil && json.Unmarshal(data, &p) == nil && p.APIServer > 0 {
		if apiPort > 0 {
			p.APIServer = apiPort
		}
		return p, nil
	}
	var err error
	for _, f := range []struct {
		dst  *int
		want int
	}{{&p.APIServer, apiPort}, {&p.EtcdClient, 0}, {&p.EtcdPeer, 0}, {&p.Kubelet, 0}} {
		if *f.dst, err = cluster.PortOr(f.want); err != nil {
			return p, err
		}
	}
	data, _ := json.MarshalIndent(p, "", "  ")
	return p, os.WriteFile(path, data, 0o644)
}
