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

// ackSettle is the longest an acknowledgement waits for mints under way
// (an entry without its SVID yet). A re-issue (a rule change, a
// revocation) first drops an entry's SVID from the counts, then adds the
// new one: acknowledging the state in between is a write at the CA, and
// in Kubernetes one to the API server, that says nothing an operator
// waits for.
const ackSettle = 2 * time.Second

// ackSettleMax bounds the wait for the agent's own mint calls under way:
// their answers change what it holds, so it waits for them (a re-issue of
// a whole cluster keeps each node's batch at the CA for seconds), but no
// longer than this.
const ackSettleMax = 30 * time.Second

// settleWait says how long a changed acknowledgement waits before it is
// sent, 0 for at once: while entries wait for their SVIDs (minting), for
// the agent's mint calls under way (inFlight) up to ackSettleMax, else up
// to ackSettle; waited is how long it has waited already.
func settleWait(minting, inFlight bool, waited time.Duration) time.Duration {
	switch {
	case !minting:
		return 0
	case inFlight && waited < ackSettleMax:
		return ackSettleMax - waited
	case waited < ackSettle:
		return ackSettle - waited
	}
	return 0
}

// ackLoop tells the CA what the agent holds (AckBundle) whenever it
// changes, and again after every reconnect, until ctx ends. A CA without
// AckBundle (an older one) ends it.
func (m *Client) ackLoop(ctx context.Context) {
	bo := backoff.Backoff{Max: 5 * time.Second}
	iss := issuers{}
	var cov covered
	var sent *typesv1.BundleAck
	var unsettled time.Time // since when a changed acknowledgement waits on mints
	for ctx.Err() == nil {
		snap, snapChanged := m.cache.Snapshot()
		var wl []*typesv1.WorkloadAck
		var wlChanged <-chan struct{}
		if m.cfg.WorkloadAcks != nil {
			wl, wlChanged = m.cfg.WorkloadAcks.List()
		}
		ack := iss.ack(snap, wl)
		pending := cov.count(snap)
		m.mu.Lock()
		m.pendingReissue = pending
		m.mu.Unlock()
		client, connChanged, err := m.nodeClient()
		send := err == nil && ack != nil && m.Synced() && !proto.Equal(ack, sent)
		var settled <-chan time.Time
		var minted <-chan struct{}
		stop := func() bool { return false }
		switch {
		case !send:
			unsettled = time.Time{}
		case minting(snap):
			now := m.cfg.Clock.Now()
			if unsettled.IsZero() {
				unsettled = now
			}
			inFlight, done := m.mintsUnderWay()
			if left := settleWait(true, inFlight, now.Sub(unsettled)); left > 0 {
				send = false
				settled, stop = m.cfg.Clock.After(left)
				if inFlight {
					minted = done
				}
			}
		}
		if send {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err = client.AckBundle(cctx, &agentv1.AckBundleRequest{Ack: ack})
			cancel()
			if status.Code(err) == codes.Unimplemented {
				m.log.Info("the CA takes no bundle acknowledgements (an older version); not sending them")
				return
			}
			if err == nil {
				sent, unsettled = ack, time.Time{}
				bo.Reset()
			}
		}
		if err != nil {
			stop()
			m.Pause(ctx, bo.Next(), connChanged)
			continue
		}
		select {
		case <-ctx.Done():
		case <-snapChanged:
		case <-wlChanged:
		case <-settled:
		case <-minted:
			// The rotation puts the answer into the cache as soon as it
			// has parsed it, well within the ackInterval below.
		case <-connChanged:
			// Another connection, maybe another replica: say it again.
			sent = nil
		}
		stop()
		m.sleep(ctx, ackInterval, nil)
	}
}

// minting tells whether some entry of snap waits for the agent to mint
// its first SVID (the workloads of own-key entries make their keys, and
// the agent holds none for them).
func minting(snap *cache.Snapshot) bool {
	for _, it := range snap.Items {
		if it.SVID == nil && !it.Entry.WorkloadKey {
			return true
		}
	}
	return false
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

// covered counts the SVIDs of a snapshot that its revocations cover. SVIDs
// are immutable, so each is parsed once for a set of revocations, not at
// every change of the cache.
type covered struct {
	revs []*typesv1.Revocation // what set was made from
	set  *revocation.Set
	by   map[*cache.SVID]bool
}

func (c *covered) count(snap *cache.Snapshot) int {
	if len(snap.Revocations) == 0 {
		c.revs, c.set, c.by = nil, nil, nil
		return 0
	}
	if len(c.revs) != len(snap.Revocations) || &c.revs[0] != &snap.Revocations[0] {
		c.revs, c.set, c.by = snap.Revocations, revocation.New(snap.Revocations), map[*cache.SVID]bool{}
	}
	n := 0
	now := make(map[*cache.SVID]bool, len(c.by))
	for _, it := range snap.Items {
		if it.SVID == nil {
			continue
		}
		v, ok := c.by[it.SVID]
		if !ok {
			chain, err := x509.ParseCertificates(it.SVID.ChainDER)
			v = err == nil && c.set.Covers(chain) != nil
		}
		now[it.SVID] = v
		if v {
			n++
		}
	}
	c.by = now
	return n
}

// PendingReissue returns how many workload SVIDs a revocation covers:
// those still to be re-minted.
func (m *Client) PendingReissue() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pendingReissue
}
