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
		got, err := Parse(string(raw), Layout{})
		if err != nil || got != want {
			t.Errorf("%s: Parse = %+v, %v; want %+v", file, got, err, want)
		}
	}
	raw, _ := os.ReadFile("testdata/v2-host-process.txt")
	if _, err := Parse(string(raw), Layout{}); !errors.Is(err, ErrNotInPod) {
		t.Errorf("host process: %v; want ErrNotInPod", err)
	}
}

func TestParseLines(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		roots    []string
		nsDepth  map[string]int
		want     Container
		wantErr  string
	}{
		{name: "static pod uid", in: "0::/kubepods/pod0123456789abcdef0123456789abcdef/" + cid, want: Container{"0123456789abcdef0123456789abcdef", cid}},
		{name: "pod cgroup itself", in: "0::/kubepods/burstable/pod" + uid, want: Container{PodUID: uid}},
		{name: "crio conmon", in: "0::/kubepods.slice/kubepods-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice/crio-conmon-" + cid + ".scope", want: Container{PodUID: uid}},
		{name: "nested under a node container", roots: []string{"/kubelet.slice/kubelet-kubepods.slice"}, in: "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice/cri-containerd-" + cid + ".scope", want: Container{uid, cid}},
		{name: "no colon", in: "garbage", wantErr: "want hierarchy"},
		{name: "relative path", in: "0::kubepods/pod" + uid, wantErr: "want hierarchy"},
		{name: "short container id", in: "0::/kubepods/pod" + uid + "/abc", wantErr: "no 64-digit"},
		{name: "disagreeing lines", in: "1:cpu:/kubepods/pod" + uid + "/" + cid + "\n2:memory:/kubepods/pod" + strings.Replace(uid, "8", "9", 1) + "/" + cid, wantErr: "disagree"},
		{name: "uppercase uid is no pod", in: "0::/kubepods/pod" + strings.ToUpper(uid) + "/" + cid, wantErr: "not in a pod"},
		{name: "empty", in: "", wantErr: "not in a pod"},
		// A delegated subtree: whoever owns it can name cgroups as they like.
		{name: "forged under a user session", in: "0::/user.slice/user-1000.slice/user@1000.service/pod" + uid + "/" + cid, wantErr: "not in a pod"},
		{name: "forged under the kubelet root's name", in: "0::/user.slice/kubepods/besteffort/pod" + uid + "/" + cid, wantErr: "not in a pod"},
		{name: "forged systemd slice", in: "0::/user.slice/kubepods-besteffort-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice/cri-containerd-" + cid + ".scope", wantErr: "not in a pod"},
		{name: "forged in one v1 hierarchy only", in: "4:memory:/user.slice\n8:pids:/kubepods/besteffort/pod" + uid + "/" + cid, wantErr: "not in a pod"},
		{name: "forged v1 hierarchy beside root lines", in: "4:memory:/\n8:pids:/attack/pod" + uid + "/" + cid, wantErr: "not in a pod"},
		{name: "pod nested in a pod", in: "0::/kubepods/besteffort/pod" + uid + "/" + cid + "/kubepods/pod" + uid, want: Container{uid, cid}},
		{name: "pod below a container", in: "0::/kubepods/besteffort/podaaaaaaaa-d0b9-4d32-8f5f-8c3d3fb0b5a1/" + cid + "/pod" + uid + "/" + cid, want: Container{"aaaaaaaa-d0b9-4d32-8f5f-8c3d3fb0b5a1", cid}},
		{name: "pod too deep", in: "0::/kubepods/besteffort/x/pod" + uid + "/" + cid, wantErr: "not in a pod"},
		// An agent in its own cgroup namespace, its root three levels down
		// (/kubepods/burstable/pod<agent>/<agent container> is four).
		{name: "other QoS class, from a namespace", nsDepth: map[string]int{"0": 3}, in: "0::/../../besteffort/pod" + uid + "/" + cid, want: Container{uid, cid}},
		{name: "same QoS class, from a namespace", nsDepth: map[string]int{"0": 3}, in: "0::/../pod" + uid + "/" + cid, want: Container{uid, cid}},
		{name: "outside the kubelet root, from a namespace", nsDepth: map[string]int{"0": 3}, in: "0::/../../../user.slice/pod" + uid + "/" + cid, wantErr: "not in a pod"},
		{name: "above the host root", nsDepth: map[string]int{"0": 3}, in: "0::/../../../../kubepods/pod" + uid + "/" + cid, wantErr: "leaves the host"},
		{name: "the agent's own pod", nsDepth: map[string]int{"0": 3}, in: "0::/" + cid, wantErr: "not in a pod"},
		{name: "dot segments", in: "0::/kubepods/./pod" + uid + "/" + cid, wantErr: "not clean"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(strings.ReplaceAll(tt.in, `\n`, "\n"), Layout{Roots: tt.roots, NSDepth: tt.nsDepth})
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
	if _, err := Read("", int32(os.Getpid()), Layout{}); err != nil && !errors.Is(err, ErrNotInPod) {
		t.Fatalf("Read(self) = %v", err)
	}
	if _, err := Read("", 1<<30, Layout{}); err == nil {
		t.Fatal("Read of a missing process succeeded")
	}
}

func FuzzParse(f *testing.F) {
	for _, name := range []string{"v2-systemd-containerd.txt", "v1-cgroupfs-docker.txt", "v2-host-process.txt"} {
		raw, _ := os.ReadFile(filepath.Join("testdata", name))
		f.Add(string(raw), uint8(0))
	}
	f.Add("0::/kubepods/pod/", uint8(0))
	f.Add("0::/../../besteffort/pod"+uid+"/"+cid, uint8(3))
	f.Add("0::/user.slice/pod"+uid+"/"+cid, uint8(0))
	f.Fuzz(func(t *testing.T, s string, depth uint8) {
		c, err := Parse(s, Layout{NSDepth: map[string]int{"0": int(depth % 8)}})
		if err == nil && c.PodUID == "" {
			t.Fatalf("Parse(%q) succeeded without a pod UID", s)
		}
		// The rule itself: a pod is only ever found under a kubelet root.
		if err == nil && depth%8 == 0 {
			for _, line := range strings.Split(s, "\n") {
				parts := strings.SplitN(line, ":", 3)
				if len(parts) == 3 && parts[2] != "/" && !strings.HasPrefix(parts[2], "/kubepods/") && !strings.HasPrefix(parts[2], "/kubepods.slice/") {
					t.Fatalf("Parse(%q) found pod %s outside the kubelet root", s, c.PodUID)
				}
			}
		}
	})
}
