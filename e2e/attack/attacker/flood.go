package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

func flood(socket string, n int, hold time.Duration, churn bool) result {
	var conns []net.Conn
	r := result{Tried: n}
	for i := 0; i < n; i++ {
		c, err := net.Dial("unix", socket)
		if err != nil {
			continue
		}
		conns = append(conns, c)
	}
	// Wait until the agent has taken up or closed every connection: one
	// it took up has its HTTP/2 greeting to read, one it closed reads
	// end of file; one that reads nothing yet still waits in the
	// socket's queue (and counts as open if it still does after 30 s).
	pending := conns
	for deadline := time.Now().Add(30 * time.Second); len(pending) > 0 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var still []net.Conn
		for _, c := range pending {
			switch peek(c) {
			case "data":
				r.Open++
			case "nothing":
				still = append(still, c)
			}
		}
		pending = still
	}
	r.Open += len(pending)
	fmt.Fprintf(os.Stderr, "attacker: the agent took up %d of %d connections; holding them %s\n", r.Open, n, hold)
	// Say it now; a benchmark measures while the connections are held
	// (and, with churn, while new ones come as fast as one process can
	// open and close them).
	if hold > 0 {
		fmt.Printf("{\"open\":%d,\"tried\":%d,\"holding\":true}\n", r.Open, n)
		os.Stdout.Sync()
		end := time.Now().Add(hold)
		for churn && time.Now().Before(end) {
			if c, err := net.Dial("unix", socket); err == nil {
				c.Close()
			}
		}
		time.Sleep(time.Until(end))
	}
	return r
}

// peek looks at a connection without waiting: "data" to read, "nothing"
// yet, or "closed".
func peek(c net.Conn) string {
	rc, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return "closed"
	}
	state := "closed"
	buf := make([]byte, 1)
	rc.Read(func(fd uintptr) bool {
		n, _, err := unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT|unix.MSG_PEEK)
		switch {
		case n > 0:
			state = "data"
		case errors.Is(err, unix.EAGAIN):
			state = "nothing"
		}
		return true
	})
	return state
}
