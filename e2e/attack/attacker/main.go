// Command attacker is what an unprivileged local user runs in the attack
// tests of e2e/attack. Each subcommand is one attack; it prints one JSON
// line saying what it got.
//
//	attacker cgroup SOCKET POD-UID CONTAINER-ID DIR...
//
// moves itself into DIR/pod<POD-UID>/<CONTAINER-ID> of each delegated
// cgroup directory DIR (one per hierarchy), then asks the Workload API for
// an X509-SVID.
//
//	attacker flood SOCKET N SECONDS [churn]
//
// opens N connections to the Workload API, as fast as it can and without
// ever speaking on them, says how many the agent took up (rather than
// closing them at once), then holds them for SECONDS; with churn,
// meanwhile it opens and closes new ones as fast as it can.
//
//	attacker join SOCKET DIR...
//
// moves itself into each cgroup directory DIR (run as root: into a real
// container's cgroups), then asks the Workload API for an X509-SVID.
//
//	attacker handoff exec|exit SOCKET PROGRAM
//
// connects to the Workload API and hands the connection to a child
// process, which reads the answers. With exec, the connecting process then
// executes PROGRAM (which an entry allows by path) before the child asks;
// with exit, the child opens an X509-SVID stream first and the connecting
// process exits: the stream must end with it.
//
//	attacker dial SOCKET...
//
// connects to each Unix socket and says which it reached.
//
//	attacker socketdir DIR
//
// (in a container, as root) tries every way to change the socket's
// directory DIR as the pod sees it: create a file or a socket of its own,
// remove, rename or chmod the agent's socket, make a directory or a link,
// and remount the volume writable; it says which succeeded, and what the
// directory holds.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

type result struct {
	SPIFFEID string `json:"spiffe_id,omitempty"`
	Error    string `json:"error,omitempty"`
	// Open and Tried count a flood's connections.
	Open  int `json:"open,omitempty"`
	Tried int `json:"tried,omitempty"`
	// Changed and Entries: what socketdir managed, and what it saw.
	Changed []string `json:"changed,omitempty"`
	Entries []string `json:"entries,omitempty"`
}

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: attacker cgroup|... ARGS"))
	}
	var r result
	switch os.Args[1] {
	case "cgroup":
		r = forgeCgroup(os.Args[2], os.Args[3], os.Args[4], os.Args[5:])
	case "flood":
		n, _ := strconv.Atoi(os.Args[3])
		secs, _ := strconv.Atoi(os.Args[4])
		r = flood(os.Args[2], n, time.Duration(secs)*time.Second, len(os.Args) > 5 && os.Args[5] == "churn")
	case "join":
		r = joinCgroups(os.Args[2], os.Args[3:])
	case "handoff":
		handoff(os.Args[2], os.Args[3], os.Args[4])
		return
	case "socketdir":
		r = changeSocketDir(os.Args[2])
	case "dial":
		r = dial(os.Args[2:])
	case "reader":
		r = reader(os.Args[2], os.Args[3])
	default:
		fail(fmt.Errorf("unknown attack %q", os.Args[1]))
	}
	json.NewEncoder(os.Stdout).Encode(r)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "attacker:", err)
	os.Exit(2)
}

func forgeCgroup(socket, podUID, containerID string, dirs []string) result {
	var forged []string
	for _, d := range dirs {
		f := filepath.Join(d, "pod"+podUID, containerID)
		if err := os.MkdirAll(f, 0o755); err != nil {
			fail(err)
		}
		forged = append(forged, f)
	}
	return joinCgroups(socket, forged)
}

func joinCgroups(socket string, dirs []string) result {
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
			fail(fmt.Errorf("moving into %s: %w", d, err))
		}
	}
	cg, _ := os.ReadFile("/proc/self/cgroup")
	fmt.Fprintf(os.Stderr, "attacker: uid %d, now in:\n%s", os.Getuid(), cg)
	return fetch(socket)
}

func fetch(socket string) result {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+socket))
	if err != nil {
		return result{Error: err.Error()}
	}
	return result{SPIFFEID: svid.ID.String()}
}

// dial connects to each socket; Changed lists those it reached.
func dial(socks []string) result {
	var r result
	for _, s := range socks {
		if c, err := net.Dial("unix", s); err == nil {
			c.Close()
			r.Changed = append(r.Changed, s)
		}
	}
	return r
}
