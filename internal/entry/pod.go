package entry

import (
	"errors"
	"strings"
)

// podPrefix starts the ID of every entry derived from a pod and an
// IdentityRule: "k8s:<pod UID>:<rule name>". Such entries are never
// stored; the CA derives them and the agent caches them apart.
const podPrefix = "k8s:"

// PodEntryID is the ID of the entry rule gives the pod with UID podUID.
func PodEntryID(podUID, rule string) string { return podPrefix + podUID + ":" + rule }

// ParsePodEntryID splits a pod entry's ID into its pod UID and rule name,
// and reports false for any other ID.
func ParsePodEntryID(id string) (podUID, rule string, ok bool) {
	rest, ok := strings.CutPrefix(id, podPrefix)
	if !ok {
		return "", "", false
	}
	podUID, rule, ok = strings.Cut(rest, ":")
	return podUID, rule, ok && podUID != "" && rule != ""
}

// IsPodEntryID reports whether id names an entry derived from a pod.
func IsPodEntryID(id string) bool { return strings.HasPrefix(id, podPrefix) }

// ErrPodNotOnNode is returned for a pod that is not bound to the asking
// agent's node.
var ErrPodNotOnNode = errors.New("pod is not bound to the agent's node")
