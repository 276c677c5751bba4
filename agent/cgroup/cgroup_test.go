package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	uid = "8dbc5577-d0b9-4d32-8f5f-8c3d3fb0b5a1"
	cid = "2d9be2b3cbd8c35c1e4ac2b0ebd9a01b8a3d3b4d5e6f708192a3b4c5d6e7f809"
)

func TestParseFiles(t *testing.T) {
	for file, want := range map[string]Container{
		"v2-systemd-containerd.txt":      {uid, cid},
		"v2-cgroupfs-containerd.txt":     {uid, cid},
		"v1-cgroupfs-docker.txt":         {uid, cid},
		"v2-systemd-crio-guaranteed.txt": {uid, cid},
		// Recorded on a real node (kubelet 1.37, containerd 1.6, cgroup v1
		// hybrid, cgroupfs driver): a BestEffort and a Burstable container,
		// and a pod sandbox (its ID is not a container of /pods).
		"v1-cgroupfs-containerd-besteffort-recorded.txt": {"c4494d08-2da7-439a-8705-3e2c23ea2d3a", "04e30531b93fe850564d89e5363e7c80ca08050b5e28ba9f9d47ae4efb682b7d"},
		"v1-cgroupfs-containerd-burstable-recorded.txt":  {"749b9371-8820-4411-b435-9ca8cfb3fa48", "5b49cc83534e9fc53f13e7b89fb05a7d64d3393267e0cdbf028eab20ee92bfd6"},
		"v1-cgroupfs-sandbox-recorded.txt":               {"749b9371-8820-4411-b435-9ca8cfb3fa48", "754394a01f654d23a170c1570ce8e341d5c10fb1c44d0129bcdc9e60a039d29f"},
	} {
		raw, err := os.ReadFile(filepath.Join("testdata", file))
		if err != nil {
			t.Fatal(err)
		}
		got, err := Parse(string(raw))
		if err != nil || got != want {
			t.Errorf("%s: Parse = %+v, %v; want %+v", file, got, err, want)
		}
	}
	raw, _ := os.ReadFile("testdata/v2-host-process.txt")
	if _, err := Parse(string(raw)); !errors.Is(err, ErrNotInPod) {
		t.Errorf("host process: %v; want ErrNotInPod", err)
	}
}

func TestParseLines(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		want     Container
		wantErr  string
	}{
		{name: "static pod uid", in: "0::/kubepods/pod0123456789abcdef0123456789abcdef/" + cid, want: Container{"0123456789abcdef0123456789abcdef", cid}},
		{name: "pod cgroup itself", in: "0::/kubepods/burstable/pod" + uid, want: Container{PodUID: uid}},
		{name: "crio conmon", in: "0::/kubepods.slice/kubepods-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice/crio-conmon-" + cid + ".scope", want: Container{PodUID: uid}},
		{name: "nested under a node container", in: "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice/cri-containerd-" + cid + ".scope", want: Container{uid, cid}},
		{name: "no colon", in: "garbage", wantErr: "want hierarchy"},
		{name: "relative path", in: "0::kubepods/pod" + uid, wantErr: "want hierarchy"},
		{name: "short container id", in: "0::/kubepods/pod" + uid + "/abc", wantErr: "no 64-digit"},
		{name: "disagreeing lines", in: "1:cpu:/kubepods/pod" + uid + "/" + cid + "\n2:memory:/kubepods/pod" + strings.Replace(uid, "8", "9", 1) + "/" + cid, wantErr: "disagree"},
		{name: "uppercase uid is no pod", in: "0::/kubepods/pod" + strings.ToUpper(uid) + "/" + cid, wantErr: "not in a pod"},
		{name: "empty", in: "", wantErr: "not in a pod"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse = %+v, %v; want error %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Parse = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestReadThisProcess(t *testing.T) {
	// The test runs on a host or in CI, not in a pod.
	if _, err := Read("", int32(os.Getpid())); err != nil && !errors.Is(err, ErrNotInPod) {
		t.Fatalf("Read(self) = %v", err)
	}
	if _, err := Read("", 1<<30); err == nil {
		t.Fatal("Read of a missing process succeeded")
	}
}

func FuzzParse(f *testing.F) {
	for _, name := range []string{"v2-systemd-containerd.txt", "v1-cgroupfs-docker.txt", "v2-host-process.txt"} {
		raw, _ := os.ReadFile(filepath.Join("testdata", name))
		f.Add(string(raw))
	}
	f.Add("0::/kubepods/pod/")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err == nil && c.PodUID == "" {
			t.Fatalf("Parse(%q) succeeded without a pod UID", s)
		}
	})
}
