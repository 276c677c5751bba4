package caclient

import (
	"context"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/signet-id/signet/agent/cache"
	"github.com/signet-id/signet/internal/backoff"
	agentv1 "github.com/signet-id/signet/proto/signet/agent/v1"
	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk/revocation"
)

// WorkloadAcks are what the node's SDK workloads acknowledged holding
// (agent/workloadapi.Acks).
type WorkloadAcks interface {
	List() ([]*typesv1.WorkloadAck, <-chan struct{})
}

// ackInterval is the least time between two acknowledgements: a batch of
// mints changes the counts once, not once per SVID.
const ackInterval = 250 * time.Millisecond

// ackLoop tells the CA what the agent holds (AckBundle) whenever it
// changes, and again after every reconnect, until ctx ends. A CA without
// AckBundle (an older one) ends it.
func (m *Client) ackLoop(ctx context.Context) {
	bo := backoff.Backoff{Max: 5 * time.Second}
	iss := issuers{}
	var sent *typesv1.BundleAck
	for ctx.Err() == nil {
		snap, snapChanged := m.cache.Snapshot()
		var wl []*typesv1.WorkloadAck
		var wlChanged <-chan struct{}
		if m.cfg.WorkloadAcks != nil {
			wl, wlChanged = m.cfg.WorkloadAcks.List()
		}
		ack := iss.ack(snap, wl)
		m.setPending(snap)
		client, connChanged, err := m.nodeClient()
		if err == nil && ack != nil && m.Synced() && !proto.Equal(ack, sent) {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err = client.AckBundle(cctx, &agentv1.AckBundleRequest{Ack: ack})
			cancel()
			if status.Code(err) == codes.Unimplemented {
				m.log.Info("the CA takes no bundle acknowledgements (an older version); not sending them")
				return
			}
			if err == nil {
				sent = ack
				bo.Reset()
			}
		}
		if err != nil {
			m.Pause(ctx, bo.Next(), connChanged)
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-snapChanged:
		case <-wlChanged:
		case <-connChanged:
			// Another connection, maybe another replica: say it again.
			sent = nil
		}
		m.sleep(ctx, ackInterval, nil)
	}
}

// issuers caches the key IDs of the intermediates the agent's SVIDs
// carry, by the intermediate's DER.
type issuers map[string][2]string

// ack is what snap and the workloads hold; nil before there is a bundle.
func (iss issuers) ack(snap *cache.Snapshot, wl []*typesv1.WorkloadAck) *typesv1.BundleAck {
	b := snap.Bundle
	if b == nil {
		return nil
	}
	ack := &typesv1.BundleAck{BundleSequence: b.Sequence, SvidsByRoot: map[string]uint32{}, SvidsByIntermediate: map[string]uint32{}, Workloads: wl}
	for _, r := range b.X509Roots {
		ack.X509Authorities = append(ack.X509Authorities, hex.EncodeToString(r.SubjectKeyId))
	}
	for kid := range b.JWTKeys {
		ack.JwtAuthorities = append(ack.JwtAuthorities, kid)
	}
	sort.Strings(ack.X509Authorities)
	sort.Strings(ack.JwtAuthorities)
	for _, it := range snap.Items {
		if it.SVID == nil {
			continue
		}
		ids, ok := iss.of(it.SVID.ChainDER)
		if !ok {
			continue
		}
		ack.SvidsByIntermediate[ids[0]]++
		ack.SvidsByRoot[ids[1]]++
	}
	return ack
}

// of returns the key IDs of the intermediate of a chain (leaf then
// intermediate, DER) and of the root that signed it.
func (iss issuers) of(chain []byte) ([2]string, bool) {
	var leaf asn1.RawValue
	rest, err := asn1.Unmarshal(chain, &leaf)
	if err != nil || len(rest) == 0 {
		return [2]string{}, false
	}
	if ids, ok := iss[string(rest)]; ok {
		return ids, true
	}
	c, err := x509.ParseCertificate(rest)
	if err != nil {
		return [2]string{}, false
	}
	ids := [2]string{hex.EncodeToString(c.SubjectKeyId), hex.EncodeToString(c.AuthorityKeyId)}
	iss[string(rest)] = ids
	return ids, true
}

// setPending records how many of the agent's SVIDs in snap a revocation
// still covers (re-issue not done), for the metric.
func (m *Client) setPending(snap *cache.Snapshot) {
	set := revocation.New(snap.Revocations)
	n := 0
	if set.Len() > 0 {
		for _, it := range snap.Items {
			if it.SVID == nil {
				continue
			}
			if chain, err := x509.ParseCertificates(it.SVID.ChainDER); err == nil && set.Covers(chain) != nil {
				n++
			}
		}
	}
	m.mu.Lock()
	m.pendingReissue = n
	m.mu.Unlock()
}

// PendingReissue returns how many workload SVIDs a revocation covers:
// those still to be re-minted.
func (m *Client) PendingReissue() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pendingReissue
}
