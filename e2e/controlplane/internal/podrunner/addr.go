package podrunner

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// addrPool hands out one loopback address per pod. Linux routes the whole
// 127.0.0.0/8 block to the lo interface, so 127.N.x.y can be bound without
// any setup, and two pods may listen on the same port. Each control plane
// claims its own N (see claimNet), so parallel test clusters never hand out
// the same pod address. 127.0.0.1 stays for the control plane itself.
type addrPool struct {
	mu    sync.Mutex
	net   int // second octet
	next  uint32
	inUse map[string]bool
}

func newAddrPool(net int) *addrPool { return &addrPool{net: net, inUse: map[string]bool{}} }

// claimNet picks a free second octet N in 2..254 for this process: it holds
// an exclusive flock on $TMPDIR/mongoferry-podnet-N.lock for its lifetime
// (the kernel releases it when the process dies, so nothing goes stale).
func claimNet() (int, error) {
	start := rand.IntN(253)
	for i := 0; i < 253; i++ {
		n := 2 + (start+i)%253
		path := filepath.Join(os.TempDir(), fmt.Sprintf("mongoferry-podnet-%d.lock", n))
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			return 0, err
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			// Keep f open (and locked) until the process exits.
			heldLocks = append(heldLocks, f)
			return n, nil
		}
		f.Close()
	}
	return 0, fmt.Errorf("no free 127.N.0.0/16 pod network (254 control planes running?)")
}

var heldLocks []*os.File

// Take returns preferred if it is a free address of the pool, otherwise
// the next free one in 127.N.0.2 .. 127.N.255.254.
func (p *addrPool) Take(preferred string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if preferred != "" && !p.inUse[preferred] && p.contains(preferred) {
		p.inUse[preferred] = true
		return preferred, nil
	}
	for i := 0; i < 1<<16; i++ {
		n := p.next
		p.next = (p.next + 1) % (1 << 16)
		if n&0xff == 0 || n&0xff == 0xff || n < 2 {
			continue
		}
		ip := fmt.Sprintf("127.%d.%d.%d", p.net, n>>8, n&0xff)
		if !p.inUse[ip] {
			p.inUse[ip] = true
			return ip, nil
		}
	}
	return "", fmt.Errorf("no free pod address left")
}

// Release returns an address to the pool.
func (p *addrPool) Release(ip string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.inUse, ip)
}

func (p *addrPool) contains(ip string) bool {
	var a, b, c, d int
	_, err := fmt.Sscanf(ip, "%d.%d.%d.%d", &a, &b, &c, &d)
	return err == nil && a == 127 && b == p.net && d > 0 && d < 255
}
