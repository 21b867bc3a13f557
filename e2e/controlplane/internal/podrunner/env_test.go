package podrunner

import (
	"os"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

func TestExpand(t *testing.T) {
	vals := map[string]string{"A": "x", "B": "y"}
	cases := map[string]string{
		"$(A)-$(B)":  "x-y",
		"$(C)":       "$(C)",
		"$$(A)":      "$(A)",
		"a$b":        "a$b",
		"$(A":        "$(A",
		"trailing $": "trailing $",
		"no refs":    "no refs",
	}
	for in, want := range cases {
		if got := expand(in, vals); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSubscript(t *testing.T) {
	if k, ok := subscript("metadata.labels['app']", "metadata.labels"); !ok || k != "app" {
		t.Errorf("%q %v", k, ok)
	}
	if _, ok := subscript("metadata.labels", "metadata.labels"); ok {
		t.Error("no subscript accepted")
	}
}

func TestResourceFieldRoundsUp(t *testing.T) {
	c := &corev1.Container{Resources: corev1.ResourceRequirements{Limits: corev1.ResourceList{
		corev1.ResourceMemory: resource.MustParse("64Mi"),
		corev1.ResourceCPU:    resource.MustParse("1500m"),
	}}}
	mi := resource.MustParse("1Mi")
	if got := resourceField(c, &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: mi}); got != "64" {
		t.Errorf("memory %s", got)
	}
	if got := resourceField(c, &corev1.ResourceFieldSelector{Resource: "limits.cpu"}); got != "2" {
		t.Errorf("cpu %s", got)
	}
	if got := resourceField(c, &corev1.ResourceFieldSelector{Resource: "requests.cpu"}); got != "0" {
		t.Errorf("unset %s", got)
	}
}

func TestKeyFilesAndModes(t *testing.T) {
	data := map[string][]byte{"b": []byte("2"), "a": []byte("1")}
	files, err := keyFiles(data, nil, nil, nil, "Secret", "s")
	if err != nil || len(files) != 2 || files[0].path != "a" || files[0].mode != 0o644 {
		t.Fatalf("%+v %v", files, err)
	}
	m400 := int32(0o400)
	files, err = keyFiles(data, []corev1.KeyToPath{{Key: "b", Path: "password"}}, &m400, nil, "Secret", "s")
	if err != nil || len(files) != 1 || files[0].path != "password" || files[0].mode != 0o400 {
		t.Fatalf("%+v %v", files, err)
	}
	if _, err := keyFiles(data, []corev1.KeyToPath{{Key: "zz", Path: "p"}}, nil, nil, "Secret", "s"); err == nil {
		t.Error("a missing key was accepted")
	}
	opt := true
	if files, err := keyFiles(data, []corev1.KeyToPath{{Key: "zz", Path: "p"}}, nil, &opt, "Secret", "s"); err != nil || len(files) != 0 {
		t.Errorf("optional missing key: %+v %v", files, err)
	}
}

func TestFSGroupMode(t *testing.T) {
	if got := fsGroupMode(0o400, false, true); got != 0o440 {
		t.Errorf("secret file %o", got)
	}
	if got := fsGroupMode(0o755, false, false); got != 0o775 {
		t.Errorf("emptyDir file %o", got)
	}
	if got := fsGroupMode(0o700, true, true); got.Perm() != 0o750 || got&os.ModeSetgid == 0 {
		t.Errorf("dir mode %v", got)
	}
}
