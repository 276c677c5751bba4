package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/signet-id/signet/ca/audit"
)

// auditVerify checks the hash chain of audit log files, given oldest
// first (a rotated file, then the current one).
func (c *cli) auditVerify(_ context.Context, args []string) error {
	var output string
	fs := c.flags("audit verify", &output)
	files, err := c.parse(fs, args, &output, 1<<20)
	if err != nil {
		return err
	}
	if len(files) == 0 {
		fmt.Fprintln(c.stderr, "signet audit verify: give the audit log files, oldest first")
		return errUsage
	}
	var readers []io.Reader
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		// A file's last line may lack its newline; the next file starts
		// on a line of its own.
		readers = append(readers, f, strings.NewReader("\n"))
	}
	v, verr := audit.Verify(io.MultiReader(readers...))
	var b *audit.Break
	if verr != nil && !errors.As(verr, &b) {
		return verr
	}
	result := map[string]any{"records": v.Records, "first": v.First, "last": v.Last, "starts_chain": v.Start, "last_hash": v.LastHash, "intact": b == nil}
	if b != nil {
		result["break"] = map[string]any{"line": b.Line, "record": b.Seq, "why": b.Why}
	}
	if err := c.print(output, result, func(w io.Writer) error {
		if b != nil {
			_, err := fmt.Fprintf(w, "BROKEN at line %d (record %d): %s\n%d records before it chain correctly (records %d to %d)\n", b.Line, b.Seq, b.Why, v.Records, v.First, v.Last)
			return err
		}
		from := "continues an earlier file"
		if v.Start {
			from = "starts the chain"
		}
		_, err := fmt.Fprintf(w, "intact: %d records, %d to %d (the first %s); last hash %s\n", v.Records, v.First, v.Last, from, v.LastHash)
		return err
	}); err != nil {
		return err
	}
	if b != nil {
		return errSilent
	}
	return nil
}
