package podrunner

import "testing"

func TestRepositoryStripsTagAndDigest(t *testing.T) {
	cases := map[string]string{
		"mongoferry":                                 "mongoferry",
		"mongoferry:dev":                             "mongoferry",
		"ghcr.io/mongoferry/mongoferry:0.1.0":        "ghcr.io/mongoferry/mongoferry",
		"localhost:5000/mongoferry":                  "localhost:5000/mongoferry",
		"localhost:5000/mongoferry:1":                "localhost:5000/mongoferry",
		"ghcr.io/mongoferry/mongoferry@sha256:abc":   "ghcr.io/mongoferry/mongoferry",
		"ghcr.io/mongoferry/mongoferry:1@sha256:abc": "ghcr.io/mongoferry/mongoferry",
	}
	for in, want := range cases {
		if got := repository(in); got != want {
			t.Errorf("repository(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestImageMapResolve(t *testing.T) {
	m := ImageMap{}
	for _, v := range []string{"mongoferry=/a.oci.tar", "mongoferry/testbox=/t.oci.tar"} {
		if err := m.Set(v); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Set("no-equals"); err == nil {
		t.Error("a mapping without = was accepted")
	}
	cases := map[string]string{
		"ghcr.io/mongoferry/mongoferry:0.1.0": "/a.oci.tar",
		"mongoferry:dev":                      "/a.oci.tar",
		"ghcr.io/mongoferry/testbox:0.1":      "/t.oci.tar", // the longer key wins
		"mongoferry/testbox":                  "/t.oci.tar",
	}
	for img, want := range cases {
		got, ok := m.Resolve(img)
		if !ok || got != want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", img, got, ok, want)
		}
	}
	for _, img := range []string{"x/mongoferry-ui", "docker.io/library/nginx:1.27", "testbox"} {
		if got, ok := m.Resolve(img); ok {
			t.Errorf("Resolve(%q) = %q, want no image", img, got)
		}
	}
}
