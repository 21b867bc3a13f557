package podrunner

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// imageConfig is the part of an OCI image configuration a runtime uses.
type imageConfig struct {
	User       string            `json:"User"`
	Env        []string          `json:"Env"`
	Entrypoint []string          `json:"Entrypoint"`
	Cmd        []string          `json:"Cmd"`
	WorkingDir string            `json:"WorkingDir"`
	Labels     map[string]string `json:"Labels"`
}

// image is an unpacked image: a read-only root filesystem shared by every
// container of it (each container writes to an overlay of its own).
type image struct {
	Digest string // manifest digest, sha256:...
	Rootfs string
	Config imageConfig
}

// descriptor is an OCI content descriptor.
type descriptor struct {
	MediaType string                             `json:"mediaType"`
	Digest    string                             `json:"digest"`
	Size      int64                              `json:"size"`
	Platform  *struct{ OS, Architecture string } `json:"platform,omitempty"`
}

type ociIndex struct {
	Manifests []descriptor `json:"manifests"`
}

type ociManifest struct {
	MediaType string       `json:"mediaType"`
	Config    descriptor   `json:"config"`
	Layers    []descriptor `json:"layers"`
	Manifests []descriptor `json:"manifests"` // when it is an index
}

const (
	mediaIndex      = "application/vnd.oci.image.index.v1+json"
	mediaDockerList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// imageStore unpacks OCI archives under dir, once per manifest digest.
type imageStore struct {
	dir string
	mu  sync.Mutex
	// by archive path: the file's size and mtime when it was read
	cache map[string]cachedImage
}

type cachedImage struct {
	size  int64
	mtime time.Time
	img   *image
}

func newImageStore(dir string) *imageStore {
	return &imageStore{dir: dir, cache: map[string]cachedImage{}}
}

// Get returns the unpacked image of an OCI archive, unpacking it the first
// time (or when the archive file changed).
func (s *imageStore) Get(archive string) (*image, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, err := os.Stat(archive)
	if err != nil {
		return nil, err
	}
	if c, ok := s.cache[archive]; ok && c.size == st.Size() && c.mtime.Equal(st.ModTime()) {
		return c.img, nil
	}
	ar, err := openArchive(archive)
	if err != nil {
		return nil, err
	}
	defer ar.Close()
	img, err := ar.unpack(s.dir)
	if err != nil {
		return nil, fmt.Errorf("image archive %s: %w", archive, err)
	}
	s.cache[archive] = cachedImage{st.Size(), st.ModTime(), img}
	return img, nil
}

// archive is an opened oci-archive (a tar of an OCI image layout); each
// member is read in place through its offset.
type archive struct {
	f       *os.File
	members map[string]section
}

type section struct{ off, size int64 }

// countingReader tracks the offset of the tar reader in the file: after
// tar.Reader.Next the count is the start of the member's data.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func openArchive(path string) (*archive, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	cr := &countingReader{r: f}
	tr := tar.NewReader(cr)
	a := &archive{f: f, members: map[string]section{}}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: not an OCI archive (tar): %w", path, err)
		}
		if h.Typeflag == tar.TypeReg {
			a.members[filepath.Clean(strings.TrimPrefix(h.Name, "./"))] = section{cr.n, h.Size}
		}
	}
	return a, nil
}

func (a *archive) Close() error { return a.f.Close() }

func (a *archive) open(name string) (*io.SectionReader, error) {
	s, ok := a.members[name]
	if !ok {
		return nil, fmt.Errorf("%s missing", name)
	}
	return io.NewSectionReader(a.f, s.off, s.size), nil
}

// blob opens a blob by descriptor.
func (a *archive) blob(d descriptor) (*io.SectionReader, error) {
	algo, hexd, ok := strings.Cut(d.Digest, ":")
	if !ok || algo != "sha256" {
		return nil, fmt.Errorf("unsupported digest %q", d.Digest)
	}
	return a.open(filepath.Join("blobs", algo, hexd))
}

// readJSON reads a small blob, checks its digest and decodes it.
func (a *archive) readJSON(d descriptor, v any) error {
	r, err := a.blob(d)
	if err != nil {
		return err
	}
	data, err := io.ReadAll(io.LimitReader(r, 4<<20))
	if err != nil {
		return err
	}
	if got := digestOf(data); got != d.Digest {
		return fmt.Errorf("blob %s: digest is %s", d.Digest, got)
	}
	return json.Unmarshal(data, v)
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// manifest finds the image manifest for this platform.
func (a *archive) manifest() (descriptor, ociManifest, error) {
	r, err := a.open("index.json")
	if err != nil {
		return descriptor{}, ociManifest{}, err
	}
	var idx ociIndex
	if err := json.NewDecoder(r).Decode(&idx); err != nil {
		return descriptor{}, ociManifest{}, fmt.Errorf("index.json: %w", err)
	}
	for depth := 0; depth < 3; depth++ {
		d, err := pickManifest(idx.Manifests, runtime.GOARCH)
		if err != nil {
			return descriptor{}, ociManifest{}, err
		}
		var m ociManifest
		if err := a.readJSON(d, &m); err != nil {
			return descriptor{}, ociManifest{}, err
		}
		if d.MediaType != mediaIndex && d.MediaType != mediaDockerList && len(m.Manifests) == 0 {
			return d, m, nil
		}
		idx = ociIndex{Manifests: m.Manifests}
	}
	return descriptor{}, ociManifest{}, errors.New("nested indexes too deep")
}

// pickManifest chooses the manifest for linux/arch, or the only one.
func pickManifest(ms []descriptor, arch string) (descriptor, error) {
	if len(ms) == 0 {
		return descriptor{}, errors.New("index lists no manifest")
	}
	for _, m := range ms {
		if m.Platform != nil && m.Platform.OS == "linux" && m.Platform.Architecture == arch {
			return m, nil
		}
	}
	for _, m := range ms {
		if m.Platform == nil {
			return m, nil
		}
	}
	return descriptor{}, fmt.Errorf("no manifest for linux/%s", arch)
}

// unpack extracts the image into <dir>/<digest>/rootfs (once) and returns it.
func (a *archive) unpack(dir string) (*image, error) {
	d, m, err := a.manifest()
	if err != nil {
		return nil, err
	}
	var cfg struct {
		Config imageConfig `json:"config"`
	}
	if err := a.readJSON(m.Config, &cfg); err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	_, hexd, _ := strings.Cut(d.Digest, ":")
	base := filepath.Join(dir, hexd)
	img := &image{Digest: d.Digest, Rootfs: filepath.Join(base, "rootfs"), Config: cfg.Config}
	done := filepath.Join(base, "unpacked")
	if _, err := os.Stat(done); err == nil {
		return img, nil
	}
	_ = os.RemoveAll(base)
	if err := os.MkdirAll(img.Rootfs, 0o755); err != nil {
		return nil, err
	}
	for _, l := range m.Layers {
		if err := a.applyLayer(l, img.Rootfs); err != nil {
			return nil, fmt.Errorf("layer %s: %w", l.Digest, err)
		}
	}
	return img, os.WriteFile(done, []byte(d.Digest+"\n"), 0o644)
}

// applyLayer extracts one layer (tar, optionally gzip) onto rootfs,
// checking its digest and honouring whiteouts.
func (a *archive) applyLayer(d descriptor, rootfs string) error {
	r, err := a.blob(d)
	if err != nil {
		return err
	}
	h := sha256.New()
	var in io.Reader = io.TeeReader(r, h)
	switch {
	case strings.HasSuffix(d.MediaType, "+gzip") || strings.HasSuffix(d.MediaType, ".tar.gzip"):
		zr, err := gzip.NewReader(in)
		if err != nil {
			return err
		}
		defer zr.Close()
		in = zr
	case strings.HasSuffix(d.MediaType, ".tar") || strings.HasSuffix(d.MediaType, "layer.v1.tar"):
	default:
		return fmt.Errorf("unsupported layer media type %q", d.MediaType)
	}
	if err := extractTar(in, rootfs); err != nil {
		return err
	}
	// Drain what tar did not read (padding), so the digest covers the blob.
	if _, err := io.Copy(io.Discard, io.TeeReader(r, h)); err != nil {
		return err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != d.Digest {
		return fmt.Errorf("digest is %s", got)
	}
	return nil
}

// extractTar writes a layer's entries under root. Paths are confined to
// root; ".wh." entries delete what lower layers wrote.
func extractTar(r io.Reader, root string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		rel, ok := confine(h.Name)
		if !ok {
			return fmt.Errorf("entry %q escapes the root", h.Name)
		}
		if rel == "." {
			continue
		}
		p := filepath.Join(root, rel)
		dir, name := filepath.Split(p)
		if name == ".wh..wh..opq" {
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				_ = os.RemoveAll(filepath.Join(dir, e.Name()))
			}
			continue
		}
		if strings.HasPrefix(name, ".wh.") {
			_ = os.RemoveAll(filepath.Join(dir, strings.TrimPrefix(name, ".wh.")))
			continue
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		mode := os.FileMode(h.Mode & 0o7777)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, mode); err != nil {
				return err
			}
		case tar.TypeReg:
			_ = os.RemoveAll(p)
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, mode)
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			_ = os.RemoveAll(p)
			if err := os.Symlink(h.Linkname, p); err != nil {
				return err
			}
		case tar.TypeLink:
			target, ok := confine(h.Linkname)
			if !ok {
				return fmt.Errorf("hard link %q escapes the root", h.Linkname)
			}
			_ = os.RemoveAll(p)
			if err := os.Link(filepath.Join(root, target), p); err != nil {
				return err
			}
		default:
			continue // devices, fifos: not needed by the project's images
		}
		if err := os.Lchown(p, h.Uid, h.Gid); err != nil {
			return err
		}
		if h.Typeflag != tar.TypeSymlink {
			if err := os.Chmod(p, mode); err != nil {
				return err
			}
			_ = os.Chtimes(p, h.ModTime, h.ModTime)
		}
	}
}

// confine cleans a tar entry name into a path relative to the root; false
// if it would leave the root.
func confine(name string) (string, bool) {
	c := filepath.Clean("/" + name)
	rel := strings.TrimPrefix(c, "/")
	if rel == "" {
		return ".", true
	}
	return rel, !strings.HasPrefix(rel, "..")
}
