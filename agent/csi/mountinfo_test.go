package csi

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseMountInfo(t *testing.T) {
	b, err := os.ReadFile("testdata/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	mounts, err := ParseMountInfo(strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 5 {
		t.Fatalf("%d mounts, want 5", len(mounts))
	}
	last := mounts[4]
	want := Mount{ID: 1234, Parent: 29, Root: "/signet", MountPoint: "/var/lib/kubelet/pods/0d1e/volumes/kubernetes.io~csi/my vol/mount", FSType: "tmpfs", Source: "tmpfs"}
	if last != want {
		t.Errorf("got %+v\nwant %+v", last, want)
	}
	for _, bad := range []string{
		"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 ext3 /dev/root rw", // no separator
		"x 35 98:0 / / rw - ext3 /dev/root rw",
		"36 35 98:0 / /a\\04 rw - ext3 /dev/root rw",
		"36 35 98:0 / /a\\999 rw - ext3 /dev/root rw",
		"36 35 98:0 / / rw -",
	} {
		if _, err := ParseMountInfo(strings.NewReader(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	// The running system's table parses.
	if _, err := ReadMounts(); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseMountInfo(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/mountinfo*")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add("36 35 98:0 / /a\\134b rw - ext3 /dev/root rw\n")
	f.Fuzz(func(t *testing.T, s string) {
		mounts, err := ParseMountInfo(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, m := range mounts {
			if strings.Contains(m.MountPoint, `\040`) && !strings.Contains(s, `\134040`) {
				t.Fatalf("escape left in %q", m.MountPoint)
			}
		}
	})
}
