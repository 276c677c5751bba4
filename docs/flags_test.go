package docs

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite cli-reference.md from the CLI's help")

// build builds the binaries of the module into a temporary directory.
func build(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("go", "build", "-o", dir+"/", "../cmd/signet", "../cmd/signet-ca", "../cmd/signet-agent").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// flagNames returns the flags that a flag package's help lists.
func flagNames(help string) []string {
	var out []string
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(help, -1) {
		out = append(out, m[1])
	}
	return out
}

// TestDaemonFlagsAreDocumented: every flag of signet-ca and signet-agent
// appears in docs/ (as --name, or as the key of the config file).
func TestDaemonFlagsAreDocumented(t *testing.T) {
	bin := build(t)
	var docs bytes.Buffer
	pages, _ := filepath.Glob("*.md")
	for _, p := range pages {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		docs.Write(raw)
	}
	text := docs.String()
	for _, prog := range []string{"signet-ca", "signet-agent"} {
		out, _ := exec.Command(filepath.Join(bin, prog), "--help").CombinedOutput()
		names := flagNames(string(out))
		if len(names) < 10 {
			t.Fatalf("%s --help lists %d flags:\n%s", prog, len(names), out)
		}
		for _, name := range names {
			if !strings.Contains(text, "--"+name) && !strings.Contains(text, "`"+name+"`") && !strings.Contains(text, "\n"+name+":") {
				t.Errorf("%s --%s appears nowhere in docs/", prog, name)
			}
		}
		if strings.Contains(string(out), "`") {
			t.Errorf("%s --help has a backquote, which the flag package takes for a placeholder name:\n%s", prog, out)
		}
	}
}

// TestCLIReference: docs/cli-reference.md is the help of every signet
// command, as the binary prints it (go test ./docs -run TestCLIReference
// -update rewrites it).
func TestCLIReference(t *testing.T) {
	bin := build(t)
	signet := filepath.Join(bin, "signet")
	run := func(args ...string) string {
		cmd := exec.Command(signet, args...)
		cmd.Env = append(os.Environ(), "SIGNET_ADMIN_SOCKET=", "SIGNET_ADMIN_ADDRESS=")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("signet %s: %v (help must need no admin API and exit 0)", strings.Join(args, " "), err)
		}
		return string(out)
	}
	var b strings.Builder
	b.WriteString("# signet command reference\n\nGenerated from the CLI's own help (`go test ./docs -run TestCLIReference -update`).\n\n```\n")
	b.WriteString(run("--help"))
	b.WriteString("```\n")
	for _, line := range strings.Split(run("--help"), "\n") {
		fields := strings.Fields(line)
		if !strings.HasPrefix(line, "  ") || strings.HasPrefix(line, "      ") || len(fields) == 0 {
			continue
		}
		args := []string{fields[0]}
		if len(fields) > 1 && !strings.HasPrefix(fields[1], "-") && !strings.HasPrefix(fields[1], "[") && strings.ToLower(fields[1]) == fields[1] {
			args = append(args, fields[1])
		}
		name := strings.Join(args, " ")
		fmt.Fprintf(&b, "\n## signet %s\n\n```\n%s```\n", name, run(append(args, "--help")...))
	}
	want := b.String()
	if *update {
		if err := os.WriteFile("cli-reference.md", []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile("cli-reference.md")
	if err != nil || string(got) != want {
		t.Fatalf("docs/cli-reference.md is not the CLI's help; run: go test ./docs -run TestCLIReference -update")
	}
}
