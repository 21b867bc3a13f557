package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// logs prints a container's log from the state directory, without the
// apiserver: `cpctl logs NS/POD [CONTAINER] [--previous]`. With several
// pods of that name (recreated), the newest directory wins.
func logs(args []string) error {
	fs := flag.NewFlagSet("logs", flag.ExitOnError)
	stateDir := fs.String("state-dir", defaultStateDir(), "control plane state directory")
	previous := fs.Bool("previous", false, "print the previous run's log")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() < 1 || !strings.Contains(fs.Arg(0), "/") {
		return fmt.Errorf("want NS/POD [CONTAINER]")
	}
	ns, pod, _ := strings.Cut(fs.Arg(0), "/")
	dirs, _ := filepath.Glob(filepath.Join(*stateDir, "pods", ns+"_"+pod+"_*"))
	if len(dirs) == 0 {
		return fmt.Errorf("no pod %s/%s in %s", ns, pod, *stateDir)
	}
	sort.Slice(dirs, func(i, j int) bool { return modTime(dirs[i]) > modTime(dirs[j]) })
	container := fs.Arg(1)
	if container == "" {
		logs, _ := filepath.Glob(filepath.Join(dirs[0], "*.log"))
		if len(logs) != 1 {
			return fmt.Errorf("pod %s/%s: name a container (%d logs)", ns, pod, len(logs))
		}
		container = strings.TrimSuffix(filepath.Base(logs[0]), ".log")
	}
	path := filepath.Join(dirs[0], container+".log")
	if *previous {
		path += ".1"
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(os.Stdout, f)
	return err
}

func modTime(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.ModTime().UnixNano()
}
