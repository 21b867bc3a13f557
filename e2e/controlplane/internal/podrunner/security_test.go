package podrunner

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func i64(v int64) *int64 { return &v }
func boolp(v bool) *bool { return &v }

func TestMergeSecurityContainerWins(t *testing.T) {
	psc := &corev1.PodSecurityContext{RunAsUser: i64(1), RunAsGroup: i64(2), RunAsNonRoot: boolp(true), FSGroup: i64(3), SupplementalGroups: []int64{4}}
	sc := &corev1.SecurityContext{RunAsUser: i64(10), ReadOnlyRootFilesystem: boolp(true), AllowPrivilegeEscalation: boolp(false)}
	e := mergeSecurity(psc, sc)
	if *e.RunAsUser != 10 || *e.RunAsGroup != 2 || !*e.RunAsNonRoot || *e.FSGroup != 3 {
		t.Errorf("merged %+v", e)
	}
	if !e.ReadOnlyRootFilesystem || !e.NoNewPrivileges || e.Privileged {
		t.Errorf("flags %+v", e)
	}
	if e := mergeSecurity(nil, nil); e.ReadOnlyRootFilesystem || e.NoNewPrivileges || e.RunAsUser != nil {
		t.Errorf("empty contexts gave %+v", e)
	}
}

func TestVerifyNonRoot(t *testing.T) {
	on := effectiveSecurity{RunAsNonRoot: boolp(true)}
	cases := []struct {
		name      string
		sec       effectiveSecurity
		imageUser string
		wantErr   string // "" = allowed
	}{
		{"not asked", effectiveSecurity{}, "", ""},
		{"asked false", effectiveSecurity{RunAsNonRoot: boolp(false)}, "0", ""},
		{"image root by default", on, "", "image will run as root"},
		{"image uid 0", on, "0:0", "image will run as root"},
		{"image 65532", on, "65532:65532", ""},
		{"image named user", on, "nonroot", "non-numeric user (nonroot)"},
		{"runAsUser 0", effectiveSecurity{RunAsNonRoot: boolp(true), RunAsUser: i64(0)}, "65532", "runAsUser breaks non-root policy"},
		{"runAsUser overrides a root image", effectiveSecurity{RunAsNonRoot: boolp(true), RunAsUser: i64(1000)}, "0", ""},
	}
	for _, c := range cases {
		err := verifyNonRoot(c.sec, c.imageUser, "p", "main")
		if c.wantErr == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		var ce *configError
		if err == nil || !errors.As(err, &ce) || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("%s: got %v, want a config error with %q", c.name, err, c.wantErr)
		}
		if startFailureReason(err) != "CreateContainerConfigError" {
			t.Errorf("%s: reason %s", c.name, startFailureReason(err))
		}
	}
}

func TestResolveIdentity(t *testing.T) {
	passwd := []byte("root:x:0:0::/root:/bin/sh\nnonroot:x:65532:65532::/home/nonroot:/bin/false\napp:x:1000:2000::/:/bin/false\n")
	group := []byte("root:x:0:\nnonroot:x:65532:\nstaff:x:50:\n")
	cases := []struct {
		name      string
		sec       effectiveSecurity
		imageUser string
		want      identity
	}{
		{"image default is root", effectiveSecurity{}, "", identity{UID: 0, GID: 0}},
		{"numeric uid:gid", effectiveSecurity{}, "65532:65532", identity{UID: 65532, GID: 65532}},
		{"name from passwd, its primary group", effectiveSecurity{}, "app", identity{UID: 1000, GID: 2000}},
		{"name:group", effectiveSecurity{}, "nonroot:staff", identity{UID: 65532, GID: 50}},
		{"runAsUser without group takes passwd's group", effectiveSecurity{RunAsUser: i64(1000)}, "65532:65532", identity{UID: 1000, GID: 2000}},
		{"runAsUser unknown to passwd gets gid 0", effectiveSecurity{RunAsUser: i64(4242)}, "", identity{UID: 4242, GID: 0}},
		{"fsGroup and supplemental groups", effectiveSecurity{RunAsUser: i64(65532), RunAsGroup: i64(65532), FSGroup: i64(7), SupplementalGroups: []int64{9, 7, 65532}}, "", identity{UID: 65532, GID: 65532, Additional: []int64{7, 9}}},
	}
	for _, c := range cases {
		got, err := resolveIdentity(c.sec, c.imageUser, passwd, group)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: got %+v, %v; want %+v", c.name, got, err, c.want)
		}
	}
	if _, err := resolveIdentity(effectiveSecurity{}, "ghost", passwd, group); err == nil {
		t.Error("an unknown user name was accepted")
	}
}

func TestCapabilitySet(t *testing.T) {
	if got := capabilitySet(effectiveSecurity{}); !reflect.DeepEqual(got, sortedCopy(defaultCapabilities)) {
		t.Errorf("default set %v", got)
	}
	dropAll := effectiveSecurity{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	if got := capabilitySet(dropAll); len(got) != 0 {
		t.Errorf("drop ALL left %v", got)
	}
	addBack := effectiveSecurity{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"net_bind_service"}}}
	if got := capabilitySet(addBack); !reflect.DeepEqual(got, []string{"CAP_NET_BIND_SERVICE"}) {
		t.Errorf("drop ALL + add got %v", got)
	}
	dropOne := effectiveSecurity{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"CAP_NET_RAW"}}}
	for _, c := range capabilitySet(dropOne) {
		if c == "CAP_NET_RAW" {
			t.Error("CAP_NET_RAW not dropped")
		}
	}
	if got := capabilitySet(effectiveSecurity{Privileged: true}); len(got) != len(allCapabilities) {
		t.Errorf("privileged got %d capabilities", len(got))
	}
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}
