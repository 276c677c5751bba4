package kubelet

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/signet-id/signet/agent/kubelet/kubelettest"
)

func podList() corev1.PodList {
	return corev1.PodList{
		TypeMeta: metav1.TypeMeta{Kind: "PodList", APIVersion: "v1"},
		Items: []corev1.Pod{{
			ObjectMeta: metav1.ObjectMeta{Name: "api-1", Namespace: "payments", UID: "8dbc5577-d0b9-4d32-8f5f-8c3d3fb0b5a1", Labels: map[string]string{"app": "api"}},
			Spec:       corev1.PodSpec{ServiceAccountName: "api", NodeName: "node1", Containers: []corev1.Container{{Name: "main", Image: "registry.local/api:1"}}},
			Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{
				Name: "main", Image: "registry.local/api:1", ContainerID: "containerd://" + strings.Repeat("ab", 32),
			}}},
		}},
	}
}

func TestPods(t *testing.T) {
	var gotAuth string
	srv := kubelettest.Start(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		if r.URL.Path != "/pods" {
			http.NotFound(w, r)
			return
		}
		if gotAuth != "Bearer kubelet-token" {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		json.NewEncoder(w).Encode(podList())
	}), "kubelet-token\n")
	caFile, tokFile := srv.CAFile, srv.TokenFile

	c, err := New(Config{URL: srv.URL, TokenFile: tokFile, CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := c.Pods(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 1 || pods[0].Namespace != "payments" || pods[0].Status.ContainerStatuses[0].Name != "main" {
		t.Fatalf("Pods = %+v", pods)
	}
	// A rotated token is read again; a refused one gives the status only.
	os.WriteFile(tokFile, []byte("wrong"), 0o600)
	_, err = c.Pods(context.Background())
	if err == nil || !strings.Contains(err.Error(), "401") || strings.Contains(err.Error(), "wrong") {
		t.Fatalf("Pods with a refused token: %v", err)
	}
	// Another CA does not verify the kubelet.
	other := httptest.NewTLSServer(http.NotFoundHandler())
	defer other.Close()
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: other.Certificate().Raw}), 0o600)
	c2, _ := New(Config{URL: srv.URL, TokenFile: tokFile, CAFile: caFile})
	if _, err := c2.Pods(context.Background()); err == nil {
		t.Fatal("kubelet with an untrusted certificate answered")
	}
	if _, err := New(Config{URL: "http://x", TokenFile: tokFile, CAFile: caFile}); err == nil {
		t.Fatal("plain http accepted")
	}
}

func TestParsePodsRefusals(t *testing.T) {
	for _, in := range []string{"", "{", `{"kind":"Status","status":"Failure"}`, `{"items": "x"}`, "[]"} {
		if _, err := ParsePods(strings.NewReader(in)); err == nil {
			t.Errorf("ParsePods(%q) succeeded", in)
		}
	}
}

func FuzzParsePods(f *testing.F) {
	raw, _ := json.Marshal(podList())
	f.Add(raw)
	f.Add([]byte(`{"kind":"PodList","items":[{"metadata":{"uid":1}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParsePods(strings.NewReader(string(b))) // must not panic
	})
}

// TestRecordedPods reads what a real kubelet (1.37) answered on /pods,
// served over TLS.
func TestRecordedPods(t *testing.T) {
	srv := kubelettest.StartRecorded(t)
	c, err := New(Config{URL: srv.URL, TokenFile: srv.TokenFile, CAFile: srv.CAFile})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := c.Pods(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range pods {
		got[p.Namespace+"/"+p.Name] = string(p.UID) + " " + p.Status.ContainerStatuses[0].ContainerID
	}
	want := map[string]string{
		"demo/web-0": "c4494d08-2da7-439a-8705-3e2c23ea2d3a containerd://04e30531b93fe850564d89e5363e7c80ca08050b5e28ba9f9d47ae4efb682b7d",
		"demo/web-1": "749b9371-8820-4411-b435-9ca8cfb3fa48 containerd://5b49cc83534e9fc53f13e7b89fb05a7d64d3393267e0cdbf028eab20ee92bfd6",
	}
	if len(got) != len(want) || got["demo/web-0"] != want["demo/web-0"] || got["demo/web-1"] != want["demo/web-1"] {
		t.Fatalf("pods = %v", got)
	}
}
