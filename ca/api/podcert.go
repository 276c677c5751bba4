package api

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"time"

	"github.com/signet-id/signet/ca/audit"
	"github.com/signet-id/signet/ca/revocations"
	"github.com/signet-id/signet/ca/signer"
	"github.com/signet-id/signet/internal/entry"
)

// PodCertificate describes one X509-SVID for a PodCertificateRequest: a
// key the kubelet made for a pod (the API server checked its possession),
// and the identity the pod's IdentityRules give it.
type PodCertificate struct {
	PublicKey crypto.PublicKey
	Entry     entry.Entry
	Node      string
	// Lifetime is from NotBefore to NotAfter, exactly (the API checks it).
	Lifetime time.Duration
	// Actor names the request in the audit log ("namespace/name").
	Actor string
}

// ErrLifetime is a pod certificate that cannot live as long as asked (the
// signing intermediate expires first).
var ErrLifetime = errors.New("the signing intermediate expires before the certificate would")

// SignPodCertificate signs and audits an X509-SVID for a pod certificate
// request, marked with the pod's node and namespace as the agent's SVIDs
// are, and past any revocation of its SPIFFE ID.
func (c *Config) SignPodCertificate(ctx context.Context, pc PodCertificate) ([]*x509.Certificate, error) {
	now := c.Now()
	revs, err := c.InForce(ctx, now)
	if err != nil {
		return nil, err
	}
	ca, _, err := c.signing(ctx, revs)
	if err != nil {
		return nil, err
	}
	p := signer.X509Params{PublicKey: pc.PublicKey, SPIFFEID: pc.Entry.SPIFFEID, DNSNames: pc.Entry.DNSNames, Now: now, Units: placeUnits(pc.Node, pc.Entry.Namespace),
		NotBeforeAtLeast: revocations.NotBeforeFloor(revs)[pc.Entry.SPIFFEID.String()]}
	// The lifetime counts from NotBefore, which is backdated.
	p.TTL = pc.Lifetime - now.Sub(signer.NotBefore(p))
	start := time.Now()
	chain, err := signer.SignX509SVID(ca, p)
	if err != nil {
		return nil, err
	}
	if got := chain[0].NotAfter.Sub(chain[0].NotBefore); got != pc.Lifetime {
		return nil, ErrLifetime
	}
	c.Metrics.signDuration.WithLabelValues("x509").Observe(time.Since(start).Seconds())
	if err := c.Audit.Write(audit.Record{Event: audit.X509Issue, Actor: "pod-certificate:" + pc.Actor, SPIFFEID: pc.Entry.SPIFFEID.String(),
		EntryID: pc.Entry.ID, Serial: serialHex(chain[0]), Node: pc.Node, Result: audit.Success}); err != nil {
		return nil, err
	}
	c.Metrics.issued.WithLabelValues("x509").Inc()
	return chain, nil
}
