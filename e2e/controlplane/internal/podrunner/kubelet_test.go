package podrunner

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestSeekTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(p, []byte("one\ntwo\nthree\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for n, want := range map[int]string{1: "three\n", 2: "two\nthree\n", 10: "one\ntwo\nthree\n", 0: ""} {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		seekTail(f, n)
		got, _ := io.ReadAll(f)
		f.Close()
		if string(got) != want {
			t.Errorf("tail %d = %q, want %q", n, got, want)
		}
	}
}

func TestLimitWriter(t *testing.T) {
	var b bytes.Buffer
	w := &limitWriter{w: &b, n: 5}
	_, _ = w.Write([]byte("abc"))
	_, _ = w.Write([]byte("defgh"))
	if _, err := w.Write([]byte("x")); err == nil {
		t.Error("no error past the limit")
	}
	if b.String() != "abcde" {
		t.Errorf("%q", b.String())
	}
}

func TestLogPath(t *testing.T) {
	if got := LogPath("/s", "ns", "p", "u", "c"); got != "/s/pods/ns_p_u/c.log" {
		t.Error(got)
	}
}
