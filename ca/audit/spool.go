package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// segmentMax is the size at which a spool starts a new segment file.
const segmentMax = 1 << 20

// Spool keeps the lines for one sink on disk until the sink has
// delivered them: segment files in a directory of their own, and a cursor
// file that says how far delivery got. Lines appended are handed to the
// operating system before Append returns, as the audit file is, so a
// restart of the CA loses none; a line is delivered at least once (a
// crash between a delivery and the cursor's update sends it again). The
// spool holds at most max bytes: past that the oldest segment is dropped,
// and the lines in it counted as dropped.
type Spool struct {
	dir string
	max int64

	mu      sync.Mutex
	cur     *os.File
	curName string
	curSize int64
	segs    []segment // oldest first; the last is cur
	// cursor: delivery has taken every line before off in segment seg.
	cursorSeg string
	cursorOff int64
	nextName  uint64
	wake      chan struct{}

	dropped atomic.Int64
}

type segment struct {
	name string
	size int64
}

// OpenSpool opens (making it if needed) the spool in dir.
func OpenSpool(dir string, maxBytes int64) (*Spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit spool: %w", err)
	}
	s := &Spool{dir: dir, max: maxBytes, wake: make(chan struct{}, 1)}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("audit spool: %w", err)
	}
	for _, e := range entries {
		n, ok := strings.CutSuffix(e.Name(), ".jsonl")
		if !ok {
			continue
		}
		num, err := strconv.ParseUint(n, 10, 64)
		if err != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("audit spool: %w", err)
		}
		s.segs = append(s.segs, segment{name: e.Name(), size: info.Size()})
		s.nextName = max(s.nextName, num+1)
	}
	sort.Slice(s.segs, func(i, j int) bool { return s.segs[i].name < s.segs[j].name })
	if raw, err := os.ReadFile(filepath.Join(dir, "cursor")); err == nil {
		if name, off, ok := strings.Cut(strings.TrimSpace(string(raw)), " "); ok {
			s.cursorSeg = name
			s.cursorOff, _ = strconv.ParseInt(off, 10, 64)
		}
	}
	if len(s.segs) > 0 && (s.cursorSeg == "" || s.cursorSeg < s.segs[0].name) {
		s.cursorSeg, s.cursorOff = s.segs[0].name, 0
	}
	return s, nil
}

// Append implements Sink.
func (s *Spool) Append(lines []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil || s.curSize >= segmentMax {
		if err := s.startSegment(); err != nil {
			return err
		}
	}
	n, err := s.cur.Write(lines)
	s.curSize += int64(n)
	s.segs[len(s.segs)-1].size = s.curSize
	if err != nil {
		return fmt.Errorf("audit spool: %w", err)
	}
	s.bound()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// startSegment starts a new segment file; s.mu is held.
func (s *Spool) startSegment() error {
	if s.cur != nil {
		s.cur.Close()
	}
	name := fmt.Sprintf("%020d.jsonl", s.nextName)
	s.nextName++
	f, err := os.OpenFile(filepath.Join(s.dir, name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.cur = nil
		return fmt.Errorf("audit spool: %w", err)
	}
	s.cur, s.curName, s.curSize = f, name, 0
	s.segs = append(s.segs, segment{name: name})
	if s.cursorSeg == "" {
		s.cursorSeg, s.cursorOff = name, 0
	}
	return nil
}

// bound drops the oldest segments while the spool holds more than max;
// s.mu is held. The current segment is never dropped.
func (s *Spool) bound() {
	total := int64(0)
	for _, seg := range s.segs {
		total += seg.size
	}
	for total > s.max && len(s.segs) > 1 {
		old := s.segs[0]
		if n := s.undeliveredLines(old); n > 0 {
			s.dropped.Add(n)
		}
		os.Remove(filepath.Join(s.dir, old.name))
		s.segs = s.segs[1:]
		total -= old.size
		if s.cursorSeg <= old.name {
			s.cursorSeg, s.cursorOff = s.segs[0].name, 0
		}
	}
}

// undeliveredLines counts the lines of seg past the cursor.
func (s *Spool) undeliveredLines(seg segment) int64 {
	if seg.name < s.cursorSeg {
		return 0
	}
	raw, err := os.ReadFile(filepath.Join(s.dir, seg.name))
	if err != nil {
		return 0
	}
	if seg.name == s.cursorSeg {
		raw = raw[min(s.cursorOff, int64(len(raw))):]
	}
	return int64(bytes.Count(raw, []byte{'\n'}))
}

// Dropped is how many lines the bound dropped before delivery.
func (s *Spool) Dropped() int64 { return s.dropped.Load() }

// Pending is how many bytes wait for delivery.
func (s *Spool) Pending() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	total := int64(0)
	for _, seg := range s.segs {
		if seg.name > s.cursorSeg {
			total += seg.size
		} else if seg.name == s.cursorSeg {
			total += seg.size - s.cursorOff
		}
	}
	return total
}

// Wake receives after lines were appended.
func (s *Spool) Wake() <-chan struct{} { return s.wake }

// Batch is lines to deliver, and where the cursor goes once they are.
type Batch struct {
	Lines   [][]byte
	seg     string
	off     int64
	emptied []string // segments wholly delivered with this batch
}

// Next returns up to maxLines undelivered lines (and at most about
// maxBytes), oldest first; none if all are delivered.
func (s *Spool) Next(maxLines int, maxBytes int) (Batch, error) {
	s.mu.Lock()
	segs := append([]segment(nil), s.segs...)
	seg, off := s.cursorSeg, s.cursorOff
	curName, curSize := s.curName, s.curSize
	s.mu.Unlock()
	b := Batch{seg: seg, off: off}
	size := 0
	for _, sg := range segs {
		if sg.name < seg || len(b.Lines) >= maxLines || size >= maxBytes {
			continue
		}
		start := int64(0)
		if sg.name == seg {
			start = off
		}
		limit := sg.size
		if sg.name == curName {
			limit = curSize
		}
		f, err := os.Open(filepath.Join(s.dir, sg.name))
		if errors.Is(err, os.ErrNotExist) {
			continue // dropped by the bound meanwhile
		}
		if err != nil {
			return Batch{}, err
		}
		r := bufio.NewReader(io.NewSectionReader(f, start, limit-start))
		pos := start
		for len(b.Lines) < maxLines && size < maxBytes {
			line, err := r.ReadBytes('\n')
			if err != nil {
				break // the rest is not a whole line yet
			}
			pos += int64(len(line))
			size += len(line)
			b.Lines = append(b.Lines, bytes.TrimSuffix(line, []byte{'\n'}))
		}
		f.Close()
		b.seg, b.off = sg.name, pos
		if pos >= limit && sg.name != curName {
			b.emptied = append(b.emptied, sg.name)
		}
	}
	return b, nil
}

// Commit records that b was delivered: the cursor moves past it, and
// segments wholly delivered are removed.
func (s *Spool) Commit(b Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.seg < s.cursorSeg || (b.seg == s.cursorSeg && b.off <= s.cursorOff) {
		return nil
	}
	s.cursorSeg, s.cursorOff = b.seg, b.off
	for _, name := range b.emptied {
		os.Remove(filepath.Join(s.dir, name))
		for i, sg := range s.segs {
			if sg.name == name {
				s.segs = append(s.segs[:i], s.segs[i+1:]...)
				break
			}
		}
	}
	tmp := filepath.Join(s.dir, "cursor.tmp")
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%s %d\n", s.cursorSeg, s.cursorOff), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(s.dir, "cursor"))
}

// Close closes the current segment.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != nil {
		return s.cur.Close()
	}
	return nil
}
