package traffic

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
	"github.com/signet-id/signet/sdk/authz"
)

// Observation is what a profile holds of one caller's calls of one
// method on one server: in which hours of the week (UTC, from Monday
// 00:00) the caller calls regularly (Hours: a thousandth of its weight or
// more), in which it called this method at all (Seen; the caller's hours
// for profiles kept before methods recorded theirs), and when it was
// last seen.
type Observation struct {
	Server, Peer, Method string
	Hours, Seen          [168]bool
	LastSeen             time.Time
}

// activeShare is the least share of a caller's weight an hour of the week
// needs to count as one it calls in.
const activeShare = 1e-3

// Observations lists what the profiles saw since a time, for the servers
// keep says yes to.
func Observations(profiles map[string]*Profile, since time.Time, keep func(server string) bool) []Observation {
	var out []Observation
	for server, p := range profiles {
		if !keep(server) {
			continue
		}
		for peer, c := range p.Callers {
			total := 0.0
			for _, w := range c.Hours {
				total += w
			}
			var hours, seen [168]bool
			for h, w := range c.Hours {
				hours[h] = total > 0 && w >= total*activeShare
				seen[h] = w > 0
			}
			for method, m := range c.Methods {
				if m.LastSeen.Before(since) {
					continue
				}
				// The hours this method was called in, where the profile
				// knows them; else the caller's.
				mseen, known := m.seenHours()
				if !known {
					mseen = seen
				}
				out = append(out, Observation{Server: server, Peer: peer, Method: method, Hours: hours, Seen: mseen, LastSeen: m.LastSeen})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Server != b.Server {
			return a.Server < b.Server
		}
		if a.Peer != b.Peer {
			return a.Peer < b.Peer
		}
		return a.Method < b.Method
	})
	return out
}

// Generalisation: callers become one peer when at least this many IDs
// share a service account's prefix (a pattern of it), or this many
// service accounts of one namespace call the same methods (the
// namespace).
const (
	sameAccount   = 3
	sameNamespace = 5
)

// Suggest returns, per server observed, the least AccessPolicy that
// allows the observed calls and nothing more: one allow rule per caller
// (or group of callers), for the methods it called, in the hours of the
// week it called in (padded by an hour either side, and left out when it
// calls at nearly any hour).
func Suggest(obs []Observation) []*typesv1.AccessPolicy {
	type group struct {
		peer    *typesv1.PolicyPeer
		methods map[string]bool
		hours   [168]bool
		members int
	}
	byServer := map[string][]Observation{}
	for _, o := range obs {
		byServer[o.Server] = append(byServer[o.Server], o)
	}
	var out []*typesv1.AccessPolicy
	servers := make([]string, 0, len(byServer))
	for s := range byServer {
		servers = append(servers, s)
	}
	sort.Strings(servers)
	for _, server := range servers {
		groups := map[string]*group{}
		var keys []string
		add := func(key string, peer *typesv1.PolicyPeer, o Observation) {
			g := groups[key]
			if g == nil {
				g = &group{peer: peer, methods: map[string]bool{}}
				groups[key] = g
				keys = append(keys, key)
			}
			g.methods[o.Method] = true
			g.members++
			for h, on := range o.Hours {
				g.hours[h] = g.hours[h] || on
			}
		}
		// Callers by service account prefix.
		accounts := map[string]map[string]bool{} // "ns/sa" -> IDs
		for _, o := range byServer[server] {
			if ns, sa, ok := accountOf(o.Peer); ok {
				k := ns + "/" + sa
				if accounts[k] == nil {
					accounts[k] = map[string]bool{}
				}
				accounts[k][o.Peer] = true
			}
		}
		for _, o := range byServer[server] {
			ns, sa, ok := accountOf(o.Peer)
			switch {
			case ok && len(accounts[ns+"/"+sa]) >= sameAccount:
				id, _ := spiffeid.FromString(o.Peer)
				add("pattern:"+ns+"/"+sa, &typesv1.PolicyPeer{Pattern: fmt.Sprintf("spiffe://%s/ns/%s/sa/%s/**", id.TrustDomain().Name(), ns, sa)}, o)
			default:
				add("id:"+o.Peer, &typesv1.PolicyPeer{Id: o.Peer}, o)
			}
		}
		// Namespaces where many accounts call the same methods.
		byNS := map[string][]string{}
		for _, k := range keys {
			g := groups[k]
			peerID := g.peer.GetId()
			if peerID == "" {
				continue
			}
			if ns, _, ok := accountOf(peerID); ok {
				byNS[ns+"|"+methodKey(g.methods)] = append(byNS[ns+"|"+methodKey(g.methods)], k)
			}
		}
		for nk, members := range byNS {
			if len(members) < sameNamespace {
				continue
			}
			ns, _, _ := strings.Cut(nk, "|")
			merged := &group{peer: &typesv1.PolicyPeer{Namespace: ns}, methods: map[string]bool{}}
			for _, k := range members {
				g := groups[k]
				for m := range g.methods {
					merged.methods[m] = true
				}
				for h, on := range g.hours {
					merged.hours[h] = merged.hours[h] || on
				}
				delete(groups, k)
			}
			groups["ns:"+ns] = merged
			keys = append(keys, "ns:"+ns)
		}
		p := &typesv1.AccessPolicy{Name: policyName(server), Target: server}
		for _, k := range keys {
			g := groups[k]
			if g == nil {
				continue
			}
			methods := make([]string, 0, len(g.methods))
			for m := range g.methods {
				methods = append(methods, m)
			}
			sort.Strings(methods)
			p.Rules = append(p.Rules, &typesv1.PolicyRule{Action: "allow", Peers: []*typesv1.PolicyPeer{g.peer}, Methods: methods, When: windows(g.hours)})
		}
		out = append(out, p)
	}
	return out
}

func methodKey(ms map[string]bool) string {
	keys := make([]string, 0, len(ms))
	for m := range ms {
		keys = append(keys, m)
	}
	sort.Strings(keys)
	return strings.Join(keys, ",")
}

// accountOf reads spiffe://td/ns/<ns>/sa/<sa>[/...].
func accountOf(id string) (ns, sa string, ok bool) {
	u, err := spiffeid.FromString(id)
	if err != nil {
		return "", "", false
	}
	parts := strings.Split(strings.TrimPrefix(u.Path(), "/"), "/")
	if len(parts) < 4 || parts[0] != "ns" || parts[2] != "sa" {
		return "", "", false
	}
	return parts[1], parts[3], true
}

// policyName names a suggested policy after its server.
func policyName(server string) string {
	name := "suggested"
	if ns, sa, ok := accountOf(server); ok {
		name += "-" + ns + "-" + sa
	} else if u, err := spiffeid.FromString(server); err == nil {
		name += strings.ReplaceAll(u.Path(), "/", "-")
	}
	return strings.ToLower(name[:min(len(name), 253)])
}

var dayNames = []string{"mon", "tue", "wed", "thu", "fri", "sat", "sun"}

// windows turns the hours of the week a caller calls in into time
// windows, an hour wider either side; none if it calls in nearly every
// hour.
func windows(hours [168]bool) []*typesv1.TimeWindow {
	var padded [168]bool
	n := 0
	for h, on := range hours {
		if on {
			padded[(h+167)%168], padded[h], padded[(h+1)%168] = true, true, true
		}
	}
	for _, on := range padded {
		if on {
			n++
		}
	}
	if n >= 160 || n == 0 {
		return nil
	}
	// Runs within each day (a run to midnight ends at 24:00).
	type run struct{ start, end int }
	perDay := make([][]run, 7)
	for d := range 7 {
		for h := 0; h < 24; {
			if !padded[d*24+h] {
				h++
				continue
			}
			s := h
			for h < 24 && padded[d*24+h] {
				h++
			}
			perDay[d] = append(perDay[d], run{s, h})
		}
	}
	// Days with the same runs share a window.
	byRuns := map[string][]string{}
	var order []string
	for d, runs := range perDay {
		if len(runs) == 0 {
			continue
		}
		k := fmt.Sprint(runs)
		if _, ok := byRuns[k]; !ok {
			order = append(order, k)
		}
		byRuns[k] = append(byRuns[k], dayNames[d])
	}
	var out []*typesv1.TimeWindow
	for _, k := range order {
		days := byRuns[k]
		var d int
		for i, name := range dayNames {
			if name == days[0] {
				d = i
			}
		}
		for _, r := range perDay[d] {
			w := &typesv1.TimeWindow{Start: fmt.Sprintf("%02d:00", r.start), End: fmt.Sprintf("%02d:00", r.end)}
			if len(days) < 7 {
				w.Days = days
			}
			out = append(out, w)
		}
	}
	return out
}

// Denied is an observed call a policy would deny, in an hour of the week.
type Denied struct {
	Observation
	Hour int // of the week, from Monday 00:00 UTC
}

// Diff returns the observed calls that policies would deny: for each
// observation, each hour of the week it was seen in at all, judged at the
// half hour.
func Diff(policies []*typesv1.AccessPolicy, obs []Observation, td spiffeid.TrustDomain) ([]Denied, error) {
	monday := time.Date(2026, 1, 5, 0, 30, 0, 0, time.UTC) // a Monday
	var out []Denied
	azs := map[string]*authz.Authorizer{}
	for _, o := range obs {
		az := azs[o.Server]
		if az == nil {
			server, err := spiffeid.FromString(o.Server)
			if err != nil {
				return nil, err
			}
			var mine []*typesv1.AccessPolicy
			for _, p := range policies {
				if authz.TargetMatches(p.GetTarget(), server) {
					// Judged as if enforced, audit mode or not.
					p = proto.CloneOf(p)
					p.Mode = ""
					mine = append(mine, p)
				}
			}
			rules, err := authz.PolicyRules(mine)
			if err != nil {
				return nil, err
			}
			if az, err = authz.New(td, rules...); err != nil {
				return nil, err
			}
			azs[o.Server] = az
		}
		peer, err := spiffeid.FromString(o.Peer)
		if err != nil {
			continue
		}
		verb, path := "", o.Method
		if v, p, ok := strings.Cut(o.Method, " "); ok && !strings.HasPrefix(o.Method, "/") {
			verb, path = v, p
		}
		allowed := func() bool { return az.AllowedHTTP(peer, verb, path) }
		if o.Method == authz.ConnectionMethod {
			// A plain TLS connection: its handshake is all the policy
			// decides.
			allowed = func() bool { return az.MayConnect(peer) }
		}
		for h, on := range o.Seen {
			if !on {
				continue
			}
			at := monday.Add(time.Duration(h) * time.Hour)
			az.SetClock(func() time.Time { return at })
			if !allowed() {
				out = append(out, Denied{Observation: o, Hour: h})
			}
		}
	}
	return out, nil
}
