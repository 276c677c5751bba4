package caclient

import (
	"testing"

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
