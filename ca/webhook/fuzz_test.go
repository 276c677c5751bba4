package webhook

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	authnv1 "k8s.io/api/authentication/v1"
)

// FuzzAdmissionReview posts arbitrary bodies to every admission endpoint,
// as the API server would: the answer is a 400 or an AdmissionReview for
// the same request UID, never a panic. Seeds: testdata/*.json (reviews as
// the API server sends them) and testdata/fuzz/FuzzAdmissionReview.
func FuzzAdmissionReview(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.json")
	for _, s := range seeds {
		raw, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		for i := range paths {
			f.Add(uint8(i), raw)
		}
	}
	h := handler()
	h.cfg.IsClusterAdmin = func(u authnv1.UserInfo) (bool, error) { return u.Username == "admin", nil }
	f.Fuzz(func(t *testing.T, endpoint uint8, body []byte) {
		path := paths[int(endpoint)%len(paths)]
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body)))
		if rec.Code == http.StatusBadRequest {
			return
		}
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: status %d", path, rec.Code)
		}
		var in, out admissionv1.AdmissionReview
		if err := json.Unmarshal(body, &in); err != nil || in.Request == nil {
			t.Fatalf("%s: answered %d to a body that is no review", path, rec.Code)
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil {
			t.Fatalf("%s: answer is no review: %v %s", path, err, rec.Body)
		}
		if out.Response.UID != in.Request.UID {
			t.Fatalf("%s: answer for UID %q, asked %q", path, out.Response.UID, in.Request.UID)
		}
		if !out.Response.Allowed && (out.Response.Result == nil || out.Response.Result.Message == "") {
			t.Fatalf("%s: refused without a message", path)
		}
	})
}

var paths = []string{"/mutate-pods", "/validate-pods", "/validate-identityrules", "/validate-accesspolicies", "/validate-namespaces", "/validate-revocations"}
