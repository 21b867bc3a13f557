package podrunner

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// cgroupRoot is where cgroup v1 hierarchies are mounted. This machine has
// hybrid cgroups: v1 controllers (memory among them) plus an empty v2
// hierarchy; runc 1.1 drives the v1 ones.
const cgroupRoot = "/sys/fs/cgroup"

// memCgroup is a memory cgroup of the pod runner's own that holds one
// container run's limit; runc puts the container in a child of it. An OOM
// kill happens in this cgroup (its limit is hit), which the eventfd
// registered on memory.oom_control reports (the cgroup v1 notification API).
type memCgroup struct {
	rel   string // path below each hierarchy's root, e.g. /mongoferry-podrunner-7/<id>
	efd   int    // counts OOM events (non-blocking reads)
	ooms  int64
	limit int64
}

// newMemCgroup creates <memory>/<rel> with the limit (memory and
// memory+swap) and starts counting OOM events.
func newMemCgroup(rel string, limit int64) (*memCgroup, error) {
	dir := filepath.Join(cgroupRoot, "memory", rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("memory cgroup: %w", err)
	}
	c := &memCgroup{rel: rel, efd: -1, limit: limit}
	v := []byte(strconv.FormatInt(limit, 10))
	if err := os.WriteFile(filepath.Join(dir, "memory.limit_in_bytes"), v, 0o644); err != nil {
		c.remove()
		return nil, fmt.Errorf("memory.limit_in_bytes: %w", err)
	}
	// No swap beyond the limit (the file exists only with swap accounting).
	if err := os.WriteFile(filepath.Join(dir, "memory.memsw.limit_in_bytes"), v, 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.remove()
		return nil, fmt.Errorf("memory.memsw.limit_in_bytes: %w", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		c.remove()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	oc, err := os.Open(filepath.Join(dir, "memory.oom_control"))
	if err != nil {
		unix.Close(efd)
		c.remove()
		return nil, err
	}
	defer oc.Close()
	reg := fmt.Sprintf("%d %d", efd, oc.Fd())
	if err := os.WriteFile(filepath.Join(dir, "cgroup.event_control"), []byte(reg), 0o644); err != nil {
		unix.Close(efd)
		c.remove()
		return nil, fmt.Errorf("cgroup.event_control: %w", err)
	}
	c.efd = efd
	return c, nil
}

// OOMKilled says whether the kernel's OOM killer ran in this cgroup. The
// kernel signals the eventfd before the victim dies, so after the
// container's exit the counter is final.
func (c *memCgroup) OOMKilled() bool {
	if c == nil || c.efd < 0 {
		return false
	}
	buf := make([]byte, 8)
	if n, err := unix.Read(c.efd, buf); err == nil && n == 8 {
		c.ooms += int64(binary.LittleEndian.Uint64(buf))
	}
	return c.ooms > 0
}

// runcPath is the cgroupsPath runc gets: a child of this cgroup.
func (c *memCgroup) runcPath() string { return c.rel + "/ctr" }

// remove deletes the cgroup in every hierarchy (runc leaves the parents
// it created in the other controllers).
func (c *memCgroup) remove() {
	ents, _ := os.ReadDir(cgroupRoot)
	for _, e := range ents {
		_ = os.Remove(filepath.Join(cgroupRoot, e.Name(), c.rel, "ctr"))
		_ = os.Remove(filepath.Join(cgroupRoot, e.Name(), c.rel))
	}
	if c.efd >= 0 {
		unix.Close(c.efd)
		c.efd = -1
	}
}

// removeCgroupParent removes the pod runner's top cgroup directories.
func removeCgroupParent(rel string) {
	ents, _ := os.ReadDir(cgroupRoot)
	for _, e := range ents {
		_ = os.Remove(filepath.Join(cgroupRoot, e.Name(), rel))
	}
}

// probeMemoryCgroup checks that the memory controller is there and
// writable by creating (and keeping) the pod runner's parent cgroup.
func probeMemoryCgroup(rel string) error {
	dir := filepath.Join(cgroupRoot, "memory", rel)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cgroup v1 memory controller: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "memory.limit_in_bytes")); err != nil {
		return fmt.Errorf("cgroup v1 memory controller: %w", err)
	}
	return nil
}
