package podrunner

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

type entry struct {
	name, body, link string
	typ              byte
	mode             int64
}

func layerTar(t *testing.T, entries []entry, zip bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w *tar.Writer
	var zw *gzip.Writer
	if zip {
		zw = gzip.NewWriter(&buf)
		w = tar.NewWriter(zw)
	} else {
		w = tar.NewWriter(&buf)
	}
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body)), Linkname: e.link}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			_, _ = w.Write([]byte(e.body))
		}
	}
	_ = w.Close()
	if zw != nil {
		_ = zw.Close()
	}
	return buf.Bytes()
}

// writeArchive writes an oci-archive with the given layers and config.
func writeArchive(t *testing.T, path string, cfg imageConfig, layers [][]byte, zipped []bool) string {
	t.Helper()
	blobs := map[string][]byte{}
	put := func(b []byte) string { d := digestOf(b); blobs[d] = b; return d }
	var descs []descriptor
	for i, l := range layers {
		mt := "application/vnd.oci.image.layer.v1.tar"
		if zipped[i] {
			mt += "+gzip"
		}
		descs = append(descs, descriptor{MediaType: mt, Digest: put(l), Size: int64(len(l))})
	}
	cfgJSON, _ := json.Marshal(map[string]any{"architecture": runtime.GOARCH, "os": "linux", "config": cfg})
	man, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: put(cfgJSON), Size: int64(len(cfgJSON))},
		"layers": descs})
	md := put(man)
	idx, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []descriptor{{MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: md, Size: int64(len(man))}}})
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	add := func(name string, b []byte) {
		_ = w.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg})
		_, _ = w.Write(b)
	}
	add("./oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	add("./index.json", idx)
	for d, b := range blobs {
		add("./blobs/sha256/"+d[len("sha256:"):], b)
	}
	_ = w.Close()
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return md
}

func TestImageStoreUnpacksLayersWithWhiteouts(t *testing.T) {
	dir := t.TempDir()
	l1 := layerTar(t, []entry{
		{name: "usr/local/bin/", typ: tar.TypeDir, mode: 0o755},
		{name: "usr/local/bin/app", body: "#!app", typ: tar.TypeReg, mode: 0o755},
		{name: "etc/passwd", body: "root:x:0:0::/:/app\n", typ: tar.TypeReg, mode: 0o644},
		{name: "etc/old", body: "gone", typ: tar.TypeReg, mode: 0o644},
		{name: "bin", link: "usr/local/bin", typ: tar.TypeSymlink},
		{name: "../../escape", body: "x", typ: tar.TypeReg, mode: 0o644},
	}, true)
	l2 := layerTar(t, []entry{
		{name: "etc/.wh.old", typ: tar.TypeReg},
		{name: "etc/new", body: "new", typ: tar.TypeReg, mode: 0o600},
	}, false)
	cfg := imageConfig{User: "65532:65532", Entrypoint: []string{"/usr/local/bin/app"}, Env: []string{"PATH=/bin"}}
	archive := filepath.Join(dir, "img.oci.tar")
	md := writeArchive(t, archive, cfg, [][]byte{l1, l2}, []bool{true, false})

	s := newImageStore(filepath.Join(dir, "images"))
	img, err := s.Get(archive)
	if err != nil {
		t.Fatal(err)
	}
	if img.Digest != md || img.Config.User != "65532:65532" || img.Config.Entrypoint[0] != "/usr/local/bin/app" {
		t.Errorf("image %+v", img)
	}
	if b, err := os.ReadFile(filepath.Join(img.Rootfs, "usr/local/bin/app")); err != nil || string(b) != "#!app" {
		t.Errorf("app: %q %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(img.Rootfs, "etc/old")); !os.IsNotExist(err) {
		t.Error("whiteout did not delete etc/old")
	}
	if st, err := os.Stat(filepath.Join(img.Rootfs, "etc/new")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("etc/new %v %v", st, err)
	}
	if l, _ := os.Readlink(filepath.Join(img.Rootfs, "bin")); l != "usr/local/bin" {
		t.Errorf("symlink %q", l)
	}
	if _, err := os.Stat(filepath.Join(img.Rootfs, "escape")); err != nil {
		t.Error("a ../ entry must land inside the root")
	}
	if _, err := os.Stat(filepath.Join(dir, "escape")); err == nil {
		t.Error("a ../ entry escaped the root")
	}
	again, err := s.Get(archive)
	if err != nil || again != img {
		t.Errorf("second Get did not reuse the unpacked image: %v", err)
	}
}

func TestImageStoreRefusesACorruptLayer(t *testing.T) {
	dir := t.TempDir()
	l := layerTar(t, []entry{{name: "f", body: "data", typ: tar.TypeReg, mode: 0o644}}, false)
	archive := filepath.Join(dir, "img.oci.tar")
	writeArchive(t, archive, imageConfig{}, [][]byte{l}, []bool{false})
	raw, _ := os.ReadFile(archive)
	i := bytes.Index(raw, []byte("data"))
	raw[i] = 'D'
	_ = os.WriteFile(archive, raw, 0o644)
	if _, err := newImageStore(filepath.Join(dir, "images")).Get(archive); err == nil {
		t.Error("a layer whose digest does not match was accepted")
	}
	if _, err := newImageStore(dir).Get(filepath.Join(dir, "missing.oci.tar")); err == nil {
		t.Error("a missing archive was accepted")
	}
}

func TestPickManifest(t *testing.T) {
	type plat = struct{ OS, Architecture string }
	ms := []descriptor{
		{Digest: "sha256:arm", Platform: &plat{"linux", "arm64"}},
		{Digest: "sha256:amd", Platform: &plat{"linux", "amd64"}},
	}
	if d, err := pickManifest(ms, "amd64"); err != nil || d.Digest != "sha256:amd" {
		t.Errorf("%v %v", d, err)
	}
	if _, err := pickManifest(ms, "s390x"); err == nil {
		t.Error("no platform match accepted")
	}
	if _, err := pickManifest(nil, "amd64"); err == nil {
		t.Error("empty index accepted")
	}
}
