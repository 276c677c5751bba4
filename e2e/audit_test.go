package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/e2e/systest"
)

// receiver is an audit webhook: it keeps every record it gets, by seq.
type receiver struct {
	mu         sync.Mutex
	bySeq      map[uint64]string
	duplicates int
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	var body struct {
		Records []json.RawMessage `json:"records"`
	}
	if err := json.NewDecoder(req.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range body.Records {
		var h struct{ Seq uint64 }
		json.Unmarshal(rec, &h)
		if _, ok := r.bySeq[h.Seq]; ok {
			r.duplicates++
		}
		r.bySeq[h.Seq] = string(rec)
	}
}

// upTo reports whether the receiver holds every record from 1 to n.
func (r *receiver) upTo(n uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := uint64(1); i <= n; i++ {
		if _, ok := r.bySeq[i]; !ok {
			return false
		}
	}
	return true
}

// lastSeq is the number of the audit file's last record.
func lastSeq(t *testing.T, path string) uint64 {
	t.Helper()
	raw, _ := os.ReadFile(path)
	v, err := audit.Verify(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("the CA's own audit log: %v", err)
	}
	return v.Last
}

// TestAuditSinks: signet-ca as a process sends every audit record to an
// HTTPS webhook and to syslog. The webhook is stopped, the CA killed and
// started again meanwhile, and the webhook comes back: it then holds every
// record of the file, each exactly as the file has it (at least once:
// duplicates are counted), and they verify as a chain. `signet audit
// verify` finds an edited record and a removed one in the file.
func TestAuditSinks(t *testing.T) {
	dir := t.TempDir()
	rcv := &receiver{bySeq: map[uint64]string{}}
	srv := httptest.NewUnstartedServer(rcv)
	srv.StartTLS()
	addr := srv.Listener.Addr().String()
	caFile := filepath.Join(t.TempDir(), "webhook-ca.pem")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600)
	tlsCert := srv.TLS.Certificates

	// A syslog receiver: octet-counted RFC 5424 messages over TCP.
	sl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()
	var slMu sync.Mutex
	var syslogMsgs []string
	go func() {
		for {
			c, err := sl.Accept()
			if err != nil {
				return
			}
			go func() {
				r := bufio.NewReader(c)
				for {
					n, err := r.ReadString(' ')
					if err != nil {
						return
					}
					size, err := strconv.Atoi(strings.TrimSpace(n))
					if err != nil {
						return
					}
					msg := make([]byte, size)
					if _, err := io.ReadFull(r, msg); err != nil {
						return
					}
					slMu.Lock()
					syslogMsgs = append(syslogMsgs, string(msg))
					slMu.Unlock()
				}
			}()
		}
	}()

	caAddr := systest.FreeAddr(t)
	args := []string{"--listen", caAddr, "--audit-webhook", "https://" + addr + "/audit", "--audit-sink-ca", caFile, "--audit-syslog", "tcp://" + sl.Addr().String()}
	ca := startCAWith(t, dir, nil, args...)
	logPath := filepath.Join(dir, "audit.log")
	for i := range 3 {
		signet(t, dir, "token", "create", "--node", fmt.Sprint("a", i))
	}
	eventuallyTB(t, "the webhook has every record", func() bool { return rcv.upTo(lastSeq(t, logPath)) })

	// The webhook goes away for a minute; records keep coming, the CA is
	// killed and started again, more records; then the webhook is back.
	srv.Close()
	away := time.Now()
	for i := range 3 {
		signet(t, dir, "token", "create", "--node", fmt.Sprint("b", i))
	}
	ca.Process.Kill()
	ca.Wait()
	startCAWith(t, dir, nil, args...)
	for i := range 3 {
		signet(t, dir, "token", "create", "--node", fmt.Sprint("c", i))
	}
	// The webhook stays away a minute in all: the CA's retries back off
	// to their longest meanwhile.
	time.Sleep(time.Until(away.Add(time.Minute)))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	back := &http.Server{Handler: rcv, TLSConfig: &tls.Config{Certificates: tlsCert}}
	go back.ServeTLS(l, "", "")
	defer back.Close()
	n := lastSeq(t, logPath)
	eventuallyTB(t, "the webhook has every record after its absence and the CA's restart", func() bool { return rcv.upTo(n) })

	file, _ := os.ReadFile(logPath)
	lines := strings.Split(strings.TrimSuffix(string(file), "\n"), "\n")
	rcv.mu.Lock()
	seqs := make([]uint64, 0, len(rcv.bySeq))
	for s := range rcv.bySeq {
		seqs = append(seqs, s)
	}
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	var got bytes.Buffer
	for _, s := range seqs {
		got.WriteString(rcv.bySeq[s] + "\n")
		if s <= uint64(len(lines)) && rcv.bySeq[s] != lines[s-1] {
			t.Errorf("record %d differs from the file's:\n%s\n%s", s, rcv.bySeq[s], lines[s-1])
		}
	}
	dups := rcv.duplicates
	rcv.mu.Unlock()
	if v, err := audit.Verify(bytes.NewReader(got.Bytes())); err != nil || !v.Start {
		t.Errorf("the records the webhook got do not chain: %+v, %v", v, err)
	}
	t.Logf("%d records delivered, %d of them twice (at least once)", len(seqs), dups)
	if !strings.Contains(string(file), `"node":"b2"`) || !strings.Contains(got.String(), `"node":"b2"`) {
		t.Errorf("a record written while the webhook was away is missing: in the file %v, delivered %v", strings.Contains(string(file), `"node":"b2"`), strings.Contains(got.String(), `"node":"b2"`))
	}
	// Syslog got them too, as RFC 5424 messages.
	slMu.Lock()
	msgs := append([]string(nil), syslogMsgs...)
	slMu.Unlock()
	rfc5424 := regexp.MustCompile(`^<85>1 \S+ \S+ signet-ca \d+ [!-~]+ - \{"hash":"[0-9a-f]{64}"`)
	if len(msgs) == 0 || !rfc5424.MatchString(msgs[0]) {
		t.Errorf("syslog messages: %d, first %.120q", len(msgs), strings.Join(msgs[:min(1, len(msgs))], ""))
	}

	// Tampering with the file.
	if out := signet(t, dir, "audit", "verify", logPath); !strings.HasPrefix(out, "intact:") {
		t.Errorf("audit verify of the intact file: %s", out)
	}
	tamper := func(name string, edit func([]string) []string) string {
		p := filepath.Join(t.TempDir(), name)
		os.WriteFile(p, []byte(strings.Join(edit(append([]string(nil), lines...)), "\n")+"\n"), 0o600)
		cmd := exec.Command(filepath.Join(binDir, "signet"), "audit", "verify", p)
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Errorf("audit verify of the %s file succeeded:\n%s", name, out)
		}
		return string(out)
	}
	if out := tamper("edited", func(l []string) []string {
		l[4] = strings.Replace(l[4], `"result":"success"`, `"result":"failure"`, 1)
		return l
	}); !strings.Contains(out, "line 5") || !strings.Contains(out, "was changed") {
		t.Errorf("edited record: %s", out)
	}
	if out := tamper("removed", func(l []string) []string { return append(l[:3], l[4:]...) }); !strings.Contains(out, "line 4") || !strings.Contains(out, "does not follow record 3") {
		t.Errorf("removed record: %s", out)
	}
}

// TestAuditWebhookPlainHTTPOnlyOnHost: audit records leave the host only
// over TLS. signet-ca refuses a plain http:// webhook anywhere but on
// loopback (an address that would carry them in the clear over a
// network), and sends them to one on loopback (a collector beside it).
func TestAuditWebhookPlainHTTPOnlyOnHost(t *testing.T) {
	for _, url := range []string{"http://audit.example.com/in", "http://192.0.2.10:8080/in", "http://[2001:db8::1]/in", "http://127.0.0.1.example.com/in"} {
		cmd := exec.Command(filepath.Join(binDir, "signet-ca"), "--trust-domain", "example.org", "--data-dir", t.TempDir(),
			"--audit-webhook", url, "--listen", systest.FreeAddr(t), "--health-addr", systest.FreeAddr(t))
		out, err := runBounded(t, cmd, "signet-ca --audit-webhook "+url)
		if err == nil || !strings.Contains(string(out), "only over https") {
			t.Errorf("--audit-webhook %s: %v\n%s; want a refusal saying records leave only over https", url, err, out)
		}
	}
	rcv := &receiver{bySeq: map[uint64]string{}}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	dir := t.TempDir()
	startCAWith(t, dir, nil, "--listen", systest.FreeAddr(t), "--audit-webhook", srv.URL+"/audit")
	signet(t, dir, "token", "create", "--node", "plain")
	eventuallyTB(t, "the loopback webhook has every record", func() bool { return rcv.upTo(lastSeq(t, filepath.Join(dir, "audit.log"))) })
}
