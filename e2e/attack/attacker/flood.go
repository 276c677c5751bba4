package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"
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
	time.Sleep(time.Second)
	buf := make([]byte, 1)
	for _, c := range conns {
		// Open: the agent's greeting is there to read, or nothing yet;
		// closed: end of file or a reset.
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		n, err := c.Read(buf)
		var ne net.Error
		if n > 0 || errors.As(err, &ne) && ne.Timeout() {
			r.Open++
		}
	}
	fmt.Fprintf(os.Stderr, "attacker: %d of %d connections open after 1 s; holding them %s\n", r.Open, n, hold)
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
