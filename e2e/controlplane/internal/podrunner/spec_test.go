package podrunner

import (
	"reflect"
	"testing"
)

func TestContainerArgvFollowsKubernetes(t *testing.T) {
	img := imageConfig{Entrypoint: []string{"/usr/local/bin/mongoferry"}, Cmd: []string{"--help"}}
	vals := map[string]string{"POD_IP": "127.5.0.2"}
	cases := []struct {
		name          string
		command, args []string
		want          []string
	}{
		{"image defaults", nil, nil, []string{"/usr/local/bin/mongoferry", "--help"}},
		{"args replace cmd", nil, []string{"worker", "--listen", "$(POD_IP):2242"}, []string{"/usr/local/bin/mongoferry", "worker", "--listen", "127.5.0.2:2242"}},
		{"command drops cmd", []string{"mongoferry"}, nil, []string{"mongoferry"}},
		{"command and args", []string{"sh", "-c"}, []string{"echo $(UNSET) $$(POD_IP)"}, []string{"sh", "-c", "echo $(UNSET) $(POD_IP)"}},
	}
	for _, c := range cases {
		if got := containerArgv(c.command, c.args, img, vals); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}

func TestMergeEnvContainerWins(t *testing.T) {
	got := mergeEnv([]string{"PATH=/bin", "A=image"}, []string{"A=pod", "B=1"})
	want := []string{"PATH=/bin", "A=pod", "B=1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%q, want %q", got, want)
	}
	if !hasVar(got, "PATH") || hasVar(got, "PAT") {
		t.Error("hasVar")
	}
}

func TestBuildSpecEnforcesTheSecurityContext(t *testing.T) {
	s := buildSpec(specInput{
		Argv:         []string{"/usr/local/bin/mongoferry", "worker"},
		Env:          []string{"PATH=/bin"},
		User:         identity{UID: 65532, GID: 65532, Additional: []int64{65532}},
		Capabilities: []string{},
		NoNewPrivs:   true,
		ReadOnlyRoot: true,
		Hostname:     "mig-worker",
		Mounts:       []ociMount{bindMount("/etc/mongoferry/api", "/state/pods/x/volumes/api-token", true)},
	})
	if !s.Root.Readonly || !s.Process.NoNewPrivileges || s.Process.User.UID != 65532 || s.Process.Cwd != "/" {
		t.Errorf("process/root %+v %+v", s.Process, s.Root)
	}
	if len(s.Process.Capabilities.Bounding) != 0 || len(s.Process.Capabilities.Effective) != 0 {
		t.Errorf("capabilities %+v", s.Process.Capabilities)
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == "network" {
			t.Error("a network namespace: pods must keep the host's loopback addresses")
		}
	}
	last := s.Mounts[len(s.Mounts)-1]
	if last.Destination != "/etc/mongoferry/api" || last.Type != "bind" || last.Options[len(last.Options)-1] != "ro" {
		t.Errorf("volume mount %+v", last)
	}
	if s.Hostname != "mig-worker" {
		t.Errorf("hostname %q", s.Hostname)
	}
}

func TestRuncID(t *testing.T) {
	if got := runcID("0b7c9d1e-1111-2222-3333-444455556666", "worker", 3); got != "0b7c9d1e1111-worker-3" {
		t.Errorf("runcID %q", got)
	}
}
