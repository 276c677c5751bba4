package audit

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/signet-id/signet/internal/backoff"
)

// Sender delivers a batch of audit lines to an external system; an error
// means it was not delivered (and is sent again).
type Sender interface {
	Send(ctx context.Context, lines [][]byte) error
	// Name names the sink in logs and metrics.
	Name() string
}

// Delivery counts what a sink delivered, for metrics.
type Delivery struct {
	Delivered, Errors func(n int)
}

// Deliver sends what the spool holds to s, oldest first, in batches of
// at most 500 lines and 1 MiB, retrying with backoff (100 ms to 30 s),
// until ctx ends.
func Deliver(ctx context.Context, spool *Spool, s Sender, d Delivery, log hclog.Logger) {
	bo := backoff.Backoff{Max: 30 * time.Second}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for ctx.Err() == nil {
		b, err := spool.Next(500, 1<<20)
		if err == nil && len(b.Lines) > 0 {
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err = s.Send(sctx, b.Lines)
			cancel()
			if err == nil {
				if d.Delivered != nil {
					d.Delivered(len(b.Lines))
				}
				if err := spool.Commit(b); err != nil {
					// The batch goes again after a restart: at least once.
					log.Warn("audit sink: could not record the delivery in the spool", "sink", s.Name(), "error", err)
				}
				bo.Reset()
				continue
			}
		}
		if err != nil {
			if d.Errors != nil {
				d.Errors(1)
			}
			wait := bo.Next()
			log.Warn("audit sink: delivery failed; the spool keeps the records", "sink", s.Name(), "error", err, "retry_in", wait, "pending_bytes", spool.Pending())
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			continue
		}
		select {
		case <-ctx.Done():
		case <-spool.Wake():
		case <-t.C:
		}
	}
}

// Webhook posts batches as the Kubernetes audit webhook backend does:
// one JSON object, {"records": [...]}, per request; any 2xx answer means
// delivered.
type Webhook struct {
	URL    string
	Client *http.Client
}

// Name implements Sender.
func (w *Webhook) Name() string { return "webhook " + w.URL }

// Send implements Sender.
func (w *Webhook) Send(ctx context.Context, lines [][]byte) error {
	var body bytes.Buffer
	body.WriteString(`{"records":[`)
	for i, l := range lines {
		if i > 0 {
			body.WriteByte(',')
		}
		body.Write(l)
	}
	body.WriteString("]}")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, &body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("the webhook answered %s", resp.Status)
	}
	return nil
}

// Syslog sends each record as an RFC 5424 message (facility authpriv,
// severity notice, MSGID the event, the record's JSON as the message) over
// TCP, or TLS with a config, with octet-counting framing (RFC 6587,
// RFC 5425). Syslog has no acknowledgement: a batch counts as delivered
// once written to the connection, so records in flight when a connection
// breaks can be lost.
type Syslog struct {
	// Addr is host:port; TLS, if set, makes it a TLS connection.
	Addr string
	TLS  *tls.Config

	conn net.Conn
	host string
}

// Name implements Sender.
func (s *Syslog) Name() string { return "syslog " + s.Addr }

// Send implements Sender.
func (s *Syslog) Send(ctx context.Context, lines [][]byte) error {
	if s.conn == nil {
		d := &net.Dialer{Timeout: 10 * time.Second}
		var c net.Conn
		var err error
		if s.TLS != nil {
			c, err = (&tls.Dialer{NetDialer: d, Config: s.TLS}).DialContext(ctx, "tcp", s.Addr)
		} else {
			c, err = d.DialContext(ctx, "tcp", s.Addr)
		}
		if err != nil {
			return err
		}
		s.conn = c
		if s.host, err = os.Hostname(); err != nil || s.host == "" {
			s.host = "-"
		}
	}
	var buf bytes.Buffer
	for _, l := range lines {
		msg := syslogMessage(s.host, os.Getpid(), l)
		buf.WriteString(strconv.Itoa(len(msg)))
		buf.WriteByte(' ')
		buf.Write(msg)
	}
	if dl, ok := ctx.Deadline(); ok {
		s.conn.SetWriteDeadline(dl)
	}
	if _, err := s.conn.Write(buf.Bytes()); err != nil {
		s.conn.Close()
		s.conn = nil
		return err
	}
	return nil
}

// syslogMessage is the RFC 5424 message of an audit line.
func syslogMessage(host string, pid int, line []byte) []byte {
	var rec struct {
		Time  string `json:"time"`
		Event string `json:"event"`
	}
	json.Unmarshal(line, &rec)
	ts := rec.Time
	if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
		ts = time.Now().UTC().Format(time.RFC3339Nano)
	}
	msgID := "-"
	if rec.Event != "" {
		msgID = strings.Map(func(r rune) rune {
			if r < 33 || r > 126 {
				return '_'
			}
			return r
		}, rec.Event)
		msgID = msgID[:min(len(msgID), 32)]
	}
	// PRI: facility authpriv (10) * 8 + severity notice (5).
	return fmt.Appendf(nil, "<85>1 %s %s signet-ca %d %s - %s", ts, host, pid, msgID, line)
}

// ParseSyslogAddr reads tcp://host:port or tls://host:port.
func ParseSyslogAddr(s string) (addr string, useTLS bool, err error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "tcp" && u.Scheme != "tls") || u.Host == "" || u.Port() == "" {
		return "", false, fmt.Errorf("%q: want tcp://host:port or tls://host:port", s)
	}
	return u.Host, u.Scheme == "tls", nil
}
