package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
)

// The audit log is tamper-evident: every line starts
//
//	{"hash":"<H>","prev":"<P>","seq":<N>, ...the record's fields}
//
// where P is the hash of the line before (genesis for the first line the
// log ever wrote, or the first after a restart found no earlier line), N
// counts lines from 1, and H is the SHA-256, in hex, of the line's bytes
// after `{"hash":"<H>",` (which hold P and N). Changing a line's fields
// breaks its own hash; removing or inserting a line breaks the next
// line's prev. Whoever can rewrite the whole file can recompute the chain:
// the copies the sinks hold (with their hashes) are the anchor.

// genesis is the prev of a chain's first line.
var genesis = hex.EncodeToString(make([]byte, sha256.Size))

const hashPrefix = `{"hash":"`

// chainLine returns the line of record (its JSON object) after prev, as
// line seq, and the line's hash.
func chainLine(prev string, seq uint64, record []byte) ([]byte, string) {
	rest := make([]byte, 0, len(record)+100)
	rest = append(rest, `"prev":"`...)
	rest = append(rest, prev...)
	rest = append(rest, `","seq":`...)
	rest = strconv.AppendUint(rest, seq, 10)
	if len(record) > 2 {
		rest = append(rest, ',')
	}
	rest = append(rest, record[1:]...)
	sum := sha256.Sum256(rest)
	h := hex.EncodeToString(sum[:])
	line := make([]byte, 0, len(hashPrefix)+len(h)+2+len(rest))
	line = append(line, hashPrefix...)
	line = append(line, h...)
	line = append(line, `",`...)
	line = append(line, rest...)
	return line, h
}

// head is a line's chain fields.
type head struct {
	hash, prev string
	seq        uint64
}

// parseHead reads the chain fields of a line and checks its own hash.
func parseHead(line []byte) (head, error) {
	const hexLen = 2 * sha256.Size
	if !bytes.HasPrefix(line, []byte(hashPrefix)) || len(line) < len(hashPrefix)+hexLen+2 ||
		string(line[len(hashPrefix)+hexLen:len(hashPrefix)+hexLen+2]) != `",` {
		return head{}, errors.New("does not start with its hash")
	}
	h := head{hash: string(line[len(hashPrefix) : len(hashPrefix)+hexLen])}
	rest := line[len(hashPrefix)+hexLen+2:]
	var fields struct {
		Prev string  `json:"prev"`
		Seq  *uint64 `json:"seq"`
	}
	if err := json.Unmarshal(append([]byte{'{'}, rest...), &fields); err != nil {
		return head{}, fmt.Errorf("not a JSON record: %v", err)
	}
	if len(fields.Prev) != hexLen || fields.Seq == nil {
		return head{}, errors.New("no prev or seq")
	}
	h.prev, h.seq = fields.Prev, *fields.Seq
	sum := sha256.Sum256(rest)
	if hex.EncodeToString(sum[:]) != h.hash {
		return h, errors.New("its hash does not match its contents: the record was changed")
	}
	return h, nil
}

// Break is where a chain is broken.
type Break struct {
	// Line is the line number in the input (from 1); Seq the record's
	// number, if it could be read.
	Line int
	Seq  uint64
	Why  string
}

func (b *Break) Error() string {
	return fmt.Sprintf("line %d (record %d): %s", b.Line, b.Seq, b.Why)
}

// Verification is what Verify found.
type Verification struct {
	Records int
	// First and Last are the sequence numbers of the first and last
	// records; Start says whether the first starts a chain (genesis)
	// rather than continuing one (a rotated or restarted log).
	First, Last uint64
	Start       bool
	LastHash    string
}

// Verify reads audit log lines (several files in their order, one after
// the other) and checks the chain: each line's hash, and that each line
// follows the one before. It returns at the first break.
func Verify(r io.Reader) (Verification, error) {
	var v Verification
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		h, err := parseHead(line)
		if err != nil {
			return v, &Break{Line: n, Seq: h.seq, Why: err.Error()}
		}
		if v.Records == 0 {
			v.First, v.Start = h.seq, h.prev == genesis
		} else if h.prev != v.LastHash {
			why := fmt.Sprintf("does not follow record %d: a record before it was removed, inserted or changed", v.Last)
			if h.prev == genesis {
				why = "starts a new chain: the log was restarted without its earlier lines, or lines before it were replaced"
			}
			return v, &Break{Line: n, Seq: h.seq, Why: why}
		}
		if v.Records > 0 && h.seq != v.Last+1 {
			return v, &Break{Line: n, Seq: h.seq, Why: fmt.Sprintf("numbered %d after %d", h.seq, v.Last)}
		}
		v.Records++
		v.Last, v.LastHash = h.seq, h.hash
	}
	if err := sc.Err(); err != nil {
		return v, err
	}
	return v, nil
}

// lastLine returns the last non-empty line of the file at path; nothing
// if the file does not exist.
func lastLine(path string) ([]byte, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	const window = 1 << 20
	off := max(st.Size()-window, 0)
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
		return nil, err
	}
	buf = bytes.TrimRight(buf, "\n")
	if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
		buf = buf[i+1:]
	}
	return buf, nil
}
