package podrunner

import (
	"fmt"
	"strings"
)

// ImageMap says which locally built OCI archive (`oci-archive` tar, as
// written by e2e/scripts/build-image.sh) holds which image. There is no
// registry: every other image is refused as if never pulled.
type ImageMap map[string]string // repository suffix -> OCI archive path

// Set parses one `repo=/path/to/image.oci.tar` mapping (flag.Value).
func (m ImageMap) Set(v string) error {
	repo, path, ok := strings.Cut(v, "=")
	if !ok || repo == "" || path == "" {
		return fmt.Errorf("image mapping %q: want REPO=/path/to/image.oci.tar", v)
	}
	m[repo] = path
	return nil
}

func (m ImageMap) String() string {
	var parts []string
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

// Type is for pflag compatibility.
func (m ImageMap) Type() string { return "repo=archive" }

// Resolve returns the archive for an image reference. A mapping key
// matches when the image's repository (without tag or digest) equals it or
// ends with "/"+key: key "mongoferry" matches "mongoferry:dev" and
// "ghcr.io/mongoferry/mongoferry:0.1.0", but not "x/mongoferry-other".
func (m ImageMap) Resolve(image string) (string, bool) {
	repo := repository(image)
	best, bestLen := "", -1
	for key, path := range m {
		if (repo == key || strings.HasSuffix(repo, "/"+key)) && len(key) > bestLen {
			best, bestLen = path, len(key)
		}
	}
	return best, bestLen >= 0
}

// repository strips the digest and the tag from an image reference.
func repository(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	// A tag is a ':' after the last '/', so registry ports stay intact.
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}
