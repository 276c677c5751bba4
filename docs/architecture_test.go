// Package docs holds the operator and architecture pages; its test keeps
// the architecture page's package tables in step with the code.
package docs

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestArchitectureNamesEveryPackage: every package of the module has a row
// in a table of architecture.md, and every package a row names exists.
func TestArchitectureNamesEveryPackage(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}", "../...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const module = "github.com/signet-id/signet/"
	pkgs := map[string]bool{}
	for _, p := range strings.Fields(string(out)) {
		if rel, ok := strings.CutPrefix(p, module); ok && rel != "docs" {
			pkgs[rel] = true
		}
	}
	page, err := os.ReadFile("architecture.md")
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	code := regexp.MustCompile("`([a-z0-9/_-]+)`")
	for _, line := range strings.Split(string(page), "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		first, _, _ := strings.Cut(strings.TrimPrefix(line, "| "), " |")
		for _, m := range code.FindAllStringSubmatch(first, -1) {
			named[m[1]] = true
			if !pkgs[m[1]] {
				t.Errorf("architecture.md has a row for %s, which is not a package", m[1])
			}
		}
	}
	if len(pkgs) < 20 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	for p := range pkgs {
		if !named[p] {
			t.Errorf("architecture.md has no row for package %s", p)
		}
	}
}

// TestPeersAndEdges: the CA and the agent are peers (neither imports the
// other, even through another package), the CA's API and every shared
// package stay free of Kubernetes client code, and the agent's pieces
// free of all Kubernetes packages but the API types.
func TestPeersAndEdges(t *testing.T) {
	const module = "github.com/signet-id/signet/"
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}} {{join .Deps \" \"}}", "../ca/...", "../agent/...", "../internal/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := strings.TrimPrefix(fields[0], module)
		for _, dep := range fields[1:] {
			rel := strings.TrimPrefix(dep, module)
			switch {
			case strings.HasPrefix(pkg, "ca/") && strings.HasPrefix(rel, "agent/"),
				strings.HasPrefix(pkg, "agent/") && strings.HasPrefix(rel, "ca/"),
				strings.HasPrefix(pkg, "internal/") && (strings.HasPrefix(rel, "ca/") || strings.HasPrefix(rel, "agent/")):
				t.Errorf("%s imports %s: the CA and the agent are peers, and what they share lies below both", pkg, rel)
			case (pkg == "ca/api" || strings.HasPrefix(pkg, "internal/") || strings.HasPrefix(pkg, "agent")) && strings.HasPrefix(dep, "k8s.io/client-go"):
				t.Errorf("%s depends on %s, but does not talk to the Kubernetes API", pkg, dep)
			}
		}
	}
}
