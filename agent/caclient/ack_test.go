package caclient

import (
	"testing"
	"time"

	"github.com/signet-id/signet/agent/cache"
	"github.com/signet-id/signet/internal/entry"
)

// An acknowledgement waits for the SVIDs the agent mints, not for those of
// own-key entries, which it never holds.
func TestMintingWaitsOnlyForTheAgentsOwnMints(t *testing.T) {
	held := &cache.Item{Entry: entry.Entry{ID: "a"}, SVID: &cache.SVID{}}
	pending := &cache.Item{Entry: entry.Entry{ID: "b"}}
	ownKey := &cache.Item{Entry: entry.Entry{ID: "c", WorkloadKey: true}}
	for _, c := range []struct {
		items []*cache.Item
		want  bool
	}{
		{nil, false},
		{[]*cache.Item{held}, false},
		{[]*cache.Item{held, ownKey}, false},
		{[]*cache.Item{held, pending}, true},
		{[]*cache.Item{ownKey, pending}, true},
	} {
		if got := minting(&cache.Snapshot{Items: c.items}); got != c.want {
			t.Errorf("minting(%d items) = %v, want %v", len(c.items), got, c.want)
		}
	}
}

// A changed acknowledgement waits while entries wait for SVIDs: for the
// agent's own mint calls under way up to ackSettleMax (their answers
// change what it holds), else up to ackSettle; at once when nothing is
// being minted.
func TestSettleWait(t *testing.T) {
	for _, c := range []struct {
		minting, inFlight bool
		waited, want      time.Duration
	}{
		{false, false, 0, 0},
		{false, true, 0, 0},
		{true, false, 0, ackSettle},
		{true, false, time.Second, ackSettle - time.Second},
		{true, false, ackSettle, 0},
		{true, true, 0, ackSettleMax},
		{true, true, 5 * time.Second, ackSettleMax - 5*time.Second},
		{true, true, ackSettleMax, 0},
		{true, true, time.Hour, 0},
	} {
		if got := settleWait(c.minting, c.inFlight, c.waited); got != c.want {
			t.Errorf("settleWait(minting %v, in flight %v, waited %s) = %s, want %s", c.minting, c.inFlight, c.waited, got, c.want)
		}
	}
}
