package attack

import (
	"context"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/signet-id/signet/ca/clustertraffic"
	"github.com/signet-id/signet/ca/traffic"
)

// as returns clients that act as user, in groups.
func as(t *testing.T, user string, groups ...string) (kubernetes.Interface, dynamic.Interface) {
	t.Helper()
	cfg := rest.CopyConfig(env.Cluster.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: append(groups, "system:authenticated")}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return kube, dyn
}

// owner gives user every right in namespace ns (more than Kubernetes'
// admin role gives a namespace's owner).
func owner(t *testing.T, user, ns string) {
	t.Helper()
	ctx := context.Background()
	rbac := env.Cluster.Client.RbacV1()
	all := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "attack-namespace-owner"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"*"}}}}
	if _, err := rbac.ClusterRoles().Create(ctx, all, metav1.CreateOptions{}); err != nil && !strings.Contains(err.Error(), "already exists") {
		t.Fatal(err)
	}
	if _, err := rbac.RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "attack-owner"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: all.Name},
		Subjects: []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: user}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestTrafficProfileWrittenByTheCAOnly attacks the detector's learned
// baselines in Kubernetes, with the shipped admission policy and RBAC
// (rendered by kustomize and by Helm) on the real API server. A thief who
// is a usual caller of a server raises no new-caller anomaly, and `signet
// policy suggest` lets it in:
//   - the owner of another namespace plants a TrafficProfile for the
//     victim's server in their own namespace (the leader reads profiles
//     back from every namespace when it takes over);
//   - the owner of the server's namespace writes the thief into the
//     profile the CA wrote, or creates one before the CA does.
//
// The CA itself (its service account, through the real clustertraffic
// code) writes profiles; metadata-only updates and deletes by an owner go
// through (the garbage collector's finalizers, a namespace's deletion).
// Last, with no policy at all, a planted profile is still not read back.
func TestTrafficProfileWrittenByTheCAOnly(t *testing.T) {
	ctx := context.Background()
	namespace(t, "attack-bank", nil)
	namespace(t, "attack-evil", nil)
	const mallory, bankOwner = "mallory@example.com", "bank-owner@example.com"
	owner(t, mallory, "attack-evil")
	owner(t, bankOwner, "attack-bank")
	_, malloryDyn := as(t, mallory)
	_, ownerDyn := as(t, bankOwner)
	caKube, caDyn := as(t, "system:serviceaccount:signet-system:signet-ca", "system:serviceaccounts", "system:serviceaccounts:signet-system")
	ca := &clustertraffic.Profiles{Client: caKube, Dynamic: caDyn, Namespace: "signet-system"}
	adminDyn, err := dynamic.NewForConfig(env.Cluster.Config)
	if err != nil {
		t.Fatal(err)
	}
	admin := &clustertraffic.Profiles{Client: env.Cluster.Client, Dynamic: adminDyn, Namespace: "signet-system"}

	const server = "spiffe://example.org/ns/attack-bank/sa/vault"
	teller, thief := "spiffe://example.org/ns/attack-bank/sa/teller", "spiffe://example.org/ns/attack-evil/sa/thief"
	profile := func(callers ...string) *traffic.Profile {
		now := time.Now().UTC()
		p := &traffic.Profile{Server: server, Since: now.Add(-7 * 24 * time.Hour), Callers: map[string]*traffic.Caller{}}
		for _, c := range callers {
			p.Callers[c] = &traffic.Caller{FirstSeen: p.Since, LastSeen: now, Decayed: now,
				Methods: map[string]*traffic.Method{"/vault.Vault/Open": {FirstSeen: p.Since, LastSeen: now}}}
		}
		return p
	}
	// loaded are the callers of server in the profiles the CA reads back.
	loaded := func(p *clustertraffic.Profiles) map[string]bool {
		t.Helper()
		all, err := p.LoadAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		callers := map[string]bool{}
		for _, prof := range all {
			if prof.Server == server {
				for c := range prof.Callers {
					callers[c] = true
				}
			}
		}
		return callers
	}
	profiles := func(d dynamic.Interface, ns string) dynamic.ResourceInterface {
		return d.Resource(clustertraffic.Resource).Namespace(ns)
	}
	// planted is a profile object as the CA writes it (labels, spec and
	// status copied from one), in namespace ns.
	planted := func(from *unstructured.Unstructured, ns string) *unstructured.Unstructured {
		u := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": from.GetAPIVersion(), "kind": from.GetKind(),
			"spec": from.Object["spec"], "status": from.Object["status"],
		}}
		u.SetName(from.GetName())
		u.SetNamespace(ns)
		u.SetLabels(from.GetLabels())
		u.SetAnnotations(from.GetAnnotations())
		return u.DeepCopy()
	}
	refused := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "written by Signet's CA only") {
			t.Errorf("%s: got %v, want the admission policy's refusal", what, err)
		}
	}

	for _, renderer := range []string{"kustomize", "helm"} {
		t.Run(renderer, func(t *testing.T) {
			var install []*unstructured.Unstructured
			for _, u := range shipped(t, renderer) {
				switch u.GetKind() + "/" + u.GetName() {
				case "ValidatingAdmissionPolicy/signet-trafficprofiles", "ValidatingAdmissionPolicyBinding/signet-trafficprofiles",
					"ClusterRole/signet-ca", "ClusterRoleBinding/signet-ca":
					install = append(install, u)
				}
			}
			if len(install) != 4 {
				t.Fatalf("%s rendered %d of the admission policy, its binding and the CA's RBAC", renderer, len(install))
			}
			adm := env.Cluster.Client.AdmissionregistrationV1()
			defer func() {
				adm.ValidatingAdmissionPolicyBindings().Delete(ctx, "signet-trafficprofiles", metav1.DeleteOptions{})
				adm.ValidatingAdmissionPolicies().Delete(ctx, "signet-trafficprofiles", metav1.DeleteOptions{})
				profiles(adminDyn, "attack-bank").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
				profiles(adminDyn, "attack-evil").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
			}()
			if err := env.Cluster.Apply(ctx, install, false); err != nil {
				t.Fatal(err)
			}
			// The CA writes the server's profile (its RBAC takes effect
			// asynchronously).
			eventually(t, 30*time.Second, "the CA saving the vault's profile", func() bool { return ca.Save(ctx, profile(teller)) == nil })
			saved, err := profiles(caDyn, "attack-bank").List(ctx, metav1.ListOptions{})
			if err != nil || len(saved.Items) != 1 {
				t.Fatalf("the CA's profiles in attack-bank: %v, %v", saved, err)
			}
			mine := &saved.Items[0]
			// The policy takes effect asynchronously: wait until an owner's
			// dry-run create is refused.
			eventually(t, 30*time.Second, "the admission policy in effect", func() bool {
				_, err := profiles(ownerDyn, "attack-bank").Create(ctx, planted(mine, "attack-bank").DeepCopy(),
					metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
				return err != nil && strings.Contains(err.Error(), "written by Signet's CA only")
			})

			// The owner of another namespace plants the vault's profile,
			// the thief among its callers.
			if err := admin.Save(ctx, profile(teller, thief)); err == nil {
				t.Fatal("a cluster admin's client wrote a profile past the policy")
			}
			plant := planted(mine, "attack-evil")
			plant.SetName("tp-vault")
			_, err = profiles(malloryDyn, "attack-evil").Create(ctx, plant, metav1.CreateOptions{})
			refused("another namespace's owner creating the vault's profile in theirs", err)

			// The server's own namespace owner edits the CA's profile.
			cur, err := profiles(ownerDyn, "attack-bank").Get(ctx, mine.GetName(), metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			edit := cur.DeepCopy()
			must(t, unstructured.SetNestedField(edit.Object, "", "status", "profile"))
			_, err = profiles(ownerDyn, "attack-bank").UpdateStatus(ctx, edit, metav1.UpdateOptions{})
			refused("the namespace owner replacing the profile's status", err)
			edit = cur.DeepCopy()
			must(t, unstructured.SetNestedField(edit.Object, thief, "spec", "server"))
			_, err = profiles(ownerDyn, "attack-bank").Update(ctx, edit, metav1.UpdateOptions{})
			refused("the namespace owner changing the profile's server", err)
			other := planted(mine, "attack-bank")
			other.SetName("tp-other")
			_, err = profiles(ownerDyn, "attack-bank").Create(ctx, other, metav1.CreateOptions{})
			refused("the namespace owner creating a profile", err)

			// What an owner and Kubernetes' controllers need goes through:
			// a finalizer on and off, a delete, after which the CA writes
			// the profile again.
			edit = cur.DeepCopy()
			edit.SetFinalizers([]string{"example.com/hold"})
			if cur, err = profiles(ownerDyn, "attack-bank").Update(ctx, edit, metav1.UpdateOptions{}); err != nil {
				t.Fatalf("a metadata-only update: %v", err)
			}
			edit = cur.DeepCopy()
			edit.SetFinalizers(nil)
			if _, err := profiles(ownerDyn, "attack-bank").Update(ctx, edit, metav1.UpdateOptions{}); err != nil {
				t.Fatalf("a metadata-only update: %v", err)
			}
			if err := profiles(ownerDyn, "attack-bank").Delete(ctx, mine.GetName(), metav1.DeleteOptions{}); err != nil {
				t.Fatalf("the namespace owner deleting the profile: %v", err)
			}
			if err := ca.Save(ctx, profile(teller)); err != nil {
				t.Fatalf("the CA writing the profile again: %v", err)
			}
			if got := loaded(ca); !got[teller] || got[thief] || len(got) != 1 {
				t.Errorf("the vault's callers read back: %v, want the teller alone", got)
			}
		})
	}

	// Without the policy (a cluster that leaves it out), a profile planted
	// in another namespace is still not read back: only the object where
	// the CA writes a server's profile speaks for it. (The policy's
	// removal takes effect asynchronously.)
	eventually(t, 30*time.Second, "a profile written with the policy removed", func() bool { return admin.Save(ctx, profile(teller, thief)) == nil })
	list, err := profiles(adminDyn, "attack-bank").List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("profiles in attack-bank: %v, %v", list, err)
	}
	// The API server keeps no status given at creation (the status
	// subresource): create, then write the status.
	plant := planted(&list.Items[0], "attack-evil")
	made, err := profiles(adminDyn, "attack-evil").Create(ctx, plant, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	made.Object["status"] = plant.Object["status"]
	if _, err := profiles(adminDyn, "attack-evil").UpdateStatus(ctx, made, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := admin.Save(ctx, profile(teller)); err != nil {
		t.Fatal(err)
	}
	if got := loaded(admin); !got[teller] || got[thief] || len(got) != 1 {
		t.Errorf("the vault's callers read back with a profile planted in attack-evil: %v, want the teller alone", got)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
