// Package entry defines a registration entry, its validation and its
// protobuf form.
package entry

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/signet-id/signet/internal/selector"
	"github.com/signet-id/signet/internal/signetid"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// MaxTTL bounds the lifetimes an entry may ask for; the CA caps them further
// by its signing certificate's remaining life.
const MaxTTL = 24 * time.Hour

// Entry says which workloads under which agent get which SPIFFE ID.
type Entry struct {
	ID        string
	SPIFFEID  spiffeid.ID
	ParentID  spiffeid.ID
	Selectors []selector.Selector
	// X509TTL and JWTTTL are zero when the CA defaults apply.
	X509TTL  time.Duration
	JWTTTL   time.Duration
	DNSNames []string
	// WorkloadKey: the workload makes its own key; the agent never mints
	// an X509-SVID of this entry with a key of its own.
	WorkloadKey bool
	// FederatesWith are the federated trust domains whose bundles the
	// workload gets, sorted.
	FederatesWith []spiffeid.TrustDomain
	Revision      int64
	CreatedAt     time.Time
	// Namespace is the Kubernetes namespace of a pod entry's pod (the CA
	// marks the pod's SVIDs with it); not carried on the wire.
	Namespace string
}

// FieldError names the field of an entry that is at fault.
type FieldError struct {
	Field string
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func fieldErr(field string, format string, args ...any) error {
	return &FieldError{Field: field, Err: fmt.Errorf(format, args...)}
}

// FromProto converts and validates an entry for trust domain td.
func FromProto(td spiffeid.TrustDomain, pb *typesv1.Entry) (Entry, error) {
	if pb == nil {
		return Entry{}, fieldErr("entry", "missing")
	}
	var e Entry
	var err error
	e.ID = pb.GetId()
	if e.SPIFFEID, err = parseID(td, "spiffe_id", pb.GetSpiffeId()); err != nil {
		return Entry{}, err
	}
	if signetid.IsReserved(e.SPIFFEID) {
		return Entry{}, fieldErr("spiffe_id", "%q: the path /signet/ is reserved for Signet's own identities", pb.GetSpiffeId())
	}
	if e.ParentID, err = parseID(td, "parent_id", pb.GetParentId()); err != nil {
		return Entry{}, err
	}
	if len(pb.GetSelectors()) == 0 {
		return Entry{}, fieldErr("selectors", "at least one selector is required")
	}
	for i, s := range pb.GetSelectors() {
		sel := selector.Selector{Type: s.GetType(), Value: s.GetValue()}
		if err := sel.Validate(); err != nil {
			return Entry{}, &FieldError{Field: fmt.Sprintf("selectors[%d]", i), Err: err}
		}
		e.Selectors = append(e.Selectors, sel)
	}
	e.Selectors = selector.Canonical(e.Selectors)
	if e.X509TTL, err = ttl("x509_ttl", pb.GetX509SvidTtlSeconds()); err != nil {
		return Entry{}, err
	}
	if e.JWTTTL, err = ttl("jwt_ttl", pb.GetJwtSvidTtlSeconds()); err != nil {
		return Entry{}, err
	}
	for i, n := range pb.GetDnsNames() {
		if err := ValidDNSName(n); err != nil {
			return Entry{}, &FieldError{Field: fmt.Sprintf("dns_names[%d]", i), Err: err}
		}
		e.DNSNames = append(e.DNSNames, n)
	}
	e.WorkloadKey = pb.GetWorkloadKey()
	if e.FederatesWith, err = FederatesWith(td, pb.GetFederatesWith()); err != nil {
		return Entry{}, err
	}
	e.Revision = pb.GetRevision()
	if pb.GetCreatedAt() != 0 {
		e.CreatedAt = time.Unix(pb.GetCreatedAt(), 0).UTC()
	}
	return e, nil
}

// FederatesWith parses trust domain names to federate with: valid, not
// td itself, sorted, each once.
func FederatesWith(td spiffeid.TrustDomain, names []string) ([]spiffeid.TrustDomain, error) {
	var out []spiffeid.TrustDomain
	seen := map[string]bool{}
	for i, n := range names {
		ftd, err := spiffeid.TrustDomainFromString(n)
		if err != nil {
			return nil, &FieldError{Field: fmt.Sprintf("federates_with[%d]", i), Err: fmt.Errorf("%q is not a trust domain: %v", n, err)}
		}
		if ftd == td {
			return nil, fieldErr(fmt.Sprintf("federates_with[%d]", i), "%q is this trust domain", n)
		}
		if !seen[ftd.Name()] {
			seen[ftd.Name()] = true
			out = append(out, ftd)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

func parseID(td spiffeid.TrustDomain, field, s string) (spiffeid.ID, error) {
	if s == "" {
		return spiffeid.ID{}, fieldErr(field, "required")
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fieldErr(field, "%q is not a valid SPIFFE ID: %v", s, err)
	}
	if id.TrustDomain() != td {
		return spiffeid.ID{}, fieldErr(field, "%q is not in trust domain %q", s, td.Name())
	}
	if id.Path() == "" {
		return spiffeid.ID{}, fieldErr(field, "%q names the trust domain, not a workload", s)
	}
	return id, nil
}

func ttl(field string, secs int64) (time.Duration, error) {
	if secs < 0 {
		return 0, fieldErr(field, "negative")
	}
	if secs > int64(MaxTTL/time.Second) {
		return 0, fieldErr(field, "%ds is longer than the maximum %s", secs, MaxTTL)
	}
	return time.Duration(secs) * time.Second, nil
}

// ValidDNSName reports why n is not a DNS name (a leading "*." label is
// allowed), or nil.
func ValidDNSName(n string) error {
	if n == "" || len(n) > 253 {
		return fmt.Errorf("%q is not a DNS name", n)
	}
	labels := strings.Split(n, ".")
	for i, l := range labels {
		if l == "*" && i == 0 && len(labels) > 1 {
			continue
		}
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("%q is not a DNS name", n)
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("%q is not a DNS name", n)
			}
		}
	}
	return nil
}

// Proto returns the protobuf form of e.
func (e Entry) Proto() *typesv1.Entry {
	pb := &typesv1.Entry{
		Id:                 e.ID,
		SpiffeId:           e.SPIFFEID.String(),
		ParentId:           e.ParentID.String(),
		X509SvidTtlSeconds: int64(e.X509TTL / time.Second),
		JwtSvidTtlSeconds:  int64(e.JWTTTL / time.Second),
		DnsNames:           e.DNSNames,
		WorkloadKey:        e.WorkloadKey,
		Revision:           e.Revision,
	}
	for _, td := range e.FederatesWith {
		pb.FederatesWith = append(pb.FederatesWith, td.Name())
	}
	if !e.CreatedAt.IsZero() {
		pb.CreatedAt = e.CreatedAt.Unix()
	}
	for _, s := range e.Selectors {
		pb.Selectors = append(pb.Selectors, &typesv1.Selector{Type: s.Type, Value: s.Value})
	}
	return pb
}

// SelectorKey is the canonical text of the entry's selectors, used to find
// duplicate entries.
func (e Entry) SelectorKey() string {
	parts := make([]string, len(e.Selectors))
	for i, s := range selector.Canonical(e.Selectors) {
		parts[i] = s.String()
	}
	return strings.Join(parts, "\x00")
}
