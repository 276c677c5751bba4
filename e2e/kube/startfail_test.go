package kube

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/signet-id/signet/ca/clustermode"
	"github.com/signet-id/signet/ca/server"
	"github.com/signet-id/signet/e2e/systest"
)

// TestFailedStartLeavesNothingBehind: a CA whose webhook cannot listen
// (its port is taken) fails at start with the reason, and leaves no
// listener, socket or informer behind: the agent API's and the health
// addresses are free again and the admin socket is gone. Before, the
// servers had started by then and were never stopped, in signet dev and
// in every process that runs the CA in-process.
func TestFailedStartLeavesNothingBehind(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := createNamespace(ctx, "start-fail"); err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	dir := t.TempDir()
	agentAddr, healthAddr := systest.FreeAddr(t), systest.FreeAddr(t)
	cfg := server.Config{
		TrustDomain: systest.TrustDomain, DataDir: dir, ListenAddr: agentAddr, HealthAddr: healthAddr, Cluster: clustermode.Build,
		Kube: &server.KubeConfig{
			Kubeconfig: cluster.Kubeconfig, ClusterName: clusterN, AgentServiceAccounts: []string{agentNS + "/" + agentSA},
			Namespace: "start-fail", Identity: "start-fail",
			Webhook: &server.WebhookConfig{ListenAddr: taken.Addr().String(), DNSNames: []string{"localhost"}, ConfigurationName: "start-fail"},
		},
	}
	err = server.Run(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "webhook listen") {
		t.Fatalf("Run = %v, want the webhook's listen error", err)
	}
	for _, addr := range []string{agentAddr, healthAddr} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("%s is still taken after the failed start: %v", addr, err)
			continue
		}
		l.Close()
	}
	if _, err := os.Stat(filepath.Join(dir, "admin.sock")); !os.IsNotExist(err) {
		t.Errorf("the admin socket is still there after the failed start (stat: %v)", err)
	}
}
