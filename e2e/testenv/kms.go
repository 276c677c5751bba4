package testenv

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// KMSRegion is the region of every test KMS; KMSURI is the signet-ca --kms
// value that reaches it, given Env.
const (
	KMSRegion = "eu-west-2"
	KMSURI    = "awskms:region=" + KMSRegion
)

// KMS is local-kms, an emulator of the AWS KMS API (built by build.sh), on
// a loopback port. It listens on every interface, as it cannot be told
// otherwise; nothing but the test talks to it, over 127.0.0.1.
type KMS struct {
	// URL is its endpoint.
	URL string
	p   *process
}

// StartKMS starts local-kms with its data in dir.
func StartKMS(dir string) (*KMS, error) {
	bin := filepath.Join(BinDir(), "local-kms")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("testenv: %s missing; run e2e/testenv/build.sh (make testenv): %w", bin, err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "kms-data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, err
	}
	p, err := startProcess(dir, "local-kms", "env",
		fmt.Sprintf("PORT=%d", port), "KMS_REGION="+KMSRegion, "KMS_ACCOUNT_ID=111122223333",
		"KMS_DATA_PATH="+data, "KMS_SEED_PATH="+filepath.Join(dir, "no-seed.yaml"), bin)
	if err != nil {
		return nil, err
	}
	k := &KMS{URL: fmt.Sprintf("http://127.0.0.1:%d", port), p: p}
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			return k, nil
		}
		if p.exited() || time.Now().After(end) {
			p.stop()
			return nil, fmt.Errorf("testenv: local-kms did not start:\n%s", p.tail())
		}
	}
}

// Env is what the AWS SDK in signet-ca needs to use this KMS: its
// endpoint, region and (ignored) credentials, and no instance metadata.
func (k *KMS) Env() []string {
	return []string{
		"AWS_ENDPOINT_URL_KMS=" + k.URL,
		"AWS_REGION=" + KMSRegion,
		"AWS_ACCESS_KEY_ID=AKIDTESTSIGNET",
		"AWS_SECRET_ACCESS_KEY=test-secret-not-checked",
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE=/dev/null",
		"AWS_SHARED_CREDENTIALS_FILE=/dev/null",
	}
}

// Stop stops local-kms.
func (k *KMS) Stop() { k.p.stop() }

// UseKMS starts local-kms for the rest of the test and points this
// process's AWS SDK at it (t.Setenv of Env).
func UseKMS(t testing.TB) *KMS {
	t.Helper()
	k, err := StartKMS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Stop)
	for _, kv := range k.Env() {
		name, value, _ := strings.Cut(kv, "=")
		t.Setenv(name, value)
	}
	return k
}
