package podrunner

import "testing"

func TestAddrPool(t *testing.T) {
	p := newAddrPool(9)
	a, err := p.Take("")
	if err != nil || a != "127.9.0.2" {
		t.Fatalf("first %q %v", a, err)
	}
	b, _ := p.Take("")
	if b == a {
		t.Fatal("same address twice")
	}
	// A pod keeps its address across a pod runner restart when it is free.
	if c, _ := p.Take("127.9.3.4"); c != "127.9.3.4" {
		t.Errorf("preferred %q", c)
	}
	if c, _ := p.Take(a); c == a {
		t.Error("an address in use was handed out again")
	}
	if c, _ := p.Take("127.10.0.5"); c == "127.10.0.5" {
		t.Error("an address of another pool was taken")
	}
	p.Release(a)
	if c, _ := p.Take(a); c != a {
		t.Errorf("released address not reusable: %q", c)
	}
	for _, ip := range []string{"127.9.0.0", "127.9.0.255", "10.0.0.1"} {
		if p.contains(ip) {
			t.Errorf("contains(%s)", ip)
		}
	}
}
