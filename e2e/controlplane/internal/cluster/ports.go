package cluster

import (
	"fmt"
	"net"
)

// FreePort asks the kernel for a free TCP port on 127.0.0.1. The port is
// released before returning, so a tiny race with other processes remains;
// it is acceptable for a test harness.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// PortOr returns p when it is set, a free port otherwise.
func PortOr(p int) (int, error) {
	if p > 0 {
		return p, nil
	}
	return FreePort()
}
