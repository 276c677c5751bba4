// Package traffic learns, per server identity, who calls which methods,
// when and how much, from the traffic counts services report
// (signet.types.v1.TrafficCount), and marks what departs from it: a
// caller or method never seen, a call in an hour of the week the baseline
// has none in, a volume far above the baseline, a burst of denials.
//
// Baselines decay (an exponential half-life, four weeks by default)
// instead of being frozen after a learning window, so that the profile
// follows a service that changes, and a weekly job is learned the first
// week it runs and kept as long as it keeps running.
//
// The engine holds no clock of its own: the minute of each count is its
// time, and Advance folds the hours that have passed into the baselines.
// It is not safe for concurrent use.
package traffic

import (
	"fmt"
	"math"
	"sort"
	"time"

	typesv1 "github.com/signet-id/signet/proto/signet/types/v1"
)

// Config holds the engine's parameters; zero values take the defaults.
type Config struct {
	// HalfLife is how fast the baselines forget: a call weighs half as
	// much after it. Default 28 days.
	HalfLife time.Duration
	// Learn is how long after a server's first report it only learns:
	// no caller, method or hour is new before it has seen a whole week.
	// Default 7 days; negative: no learning period.
	Learn time.Duration
	// VolumeK, VolumeRatio and VolumeFloor: an hour's calls (or bytes) of
	// one caller and method is anomalous when it exceeds all of mean +
	// VolumeK × deviation, VolumeRatio × mean, and VolumeFloor (calls; for
	// bytes 1 KiB × VolumeFloor), where mean and deviation are decayed
	// averages of the past hours in which the caller called the method
	// (the deviation is the mean absolute deviation × 1.4826, an estimate
	// of the standard deviation robust to a few outliers). Defaults 6,
	// 4 and 20.
	VolumeK, VolumeRatio, VolumeFloor float64
	// VolumeHours is how many active hours a caller and method need
	// before their volume is judged. Default 24.
	VolumeHours int
	// DenialBurst is how many denials of one caller in five minutes make
	// a burst. Default 20.
	DenialBurst int64
	// MaxCallers and MaxMethods bound a profile: callers per server and
	// methods per caller; past them new ones are counted in Dropped and
	// not learned (nor reported as new more than once). Defaults 1,000
	// and 200.
	MaxCallers, MaxMethods int
}

func (c *Config) defaults() {
	if c.HalfLife == 0 {
		c.HalfLife = 28 * 24 * time.Hour
	}
	switch {
	case c.Learn == 0:
		c.Learn = 7 * 24 * time.Hour
	case c.Learn < 0:
		c.Learn = 0
	}
	if c.VolumeK == 0 {
		c.VolumeK = 6
	}
	if c.VolumeRatio == 0 {
		c.VolumeRatio = 4
	}
	if c.VolumeFloor == 0 {
		c.VolumeFloor = 20
	}
	if c.VolumeHours == 0 {
		c.VolumeHours = 24
	}
	if c.DenialBurst == 0 {
		c.DenialBurst = 20
	}
	if c.MaxCallers == 0 {
		c.MaxCallers = 1000
	}
	if c.MaxMethods == 0 {
		c.MaxMethods = 200
	}
}

// Anomaly kinds, as audit events name them ("anomaly." and the kind).
const (
	NewCaller   = "new_caller"
	NewMethod   = "new_method"
	UnusualTime = "unusual_time"
	Volume      = "volume"
	Denials     = "denials"
)

// Anomaly is one departure from a server's profile.
type Anomaly struct {
	Kind   string
	Server string
	Peer   string
	Method string
	// At is the minute it was seen in.
	At time.Time
	// Detail says what was unusual, with the figures.
	Detail string
}

// Profile is what the engine learned of one server.
type Profile struct {
	Server  string
	Since   time.Time
	Callers map[string]*Caller
	// Dropped counts callers and methods past the bounds.
	Dropped int64
}

// Caller is one caller of a server.
type Caller struct {
	FirstSeen, LastSeen time.Time
	// Hours weighs the caller's calls by hour of the week (0: Monday
	// 00:00 UTC), decayed to Decayed.
	Hours   [168]float64
	Decayed time.Time
	Methods map[string]*Method
}

// Method is one method a caller called.
type Method struct {
	FirstSeen, LastSeen time.Time
	Calls, Bytes        Baseline
	Denials             int64
	// SeenHours are the hours of the week (bits 0 to 167, as Hours) in
	// which the method had calls that were not denied; nil in profiles
	// kept before it was recorded.
	SeenHours []uint64 `json:",omitempty"`
}

// seenIn records an allowed call in hour h of the week.
func (m *Method) seenIn(h int) {
	if m.SeenHours == nil {
		m.SeenHours = make([]uint64, 3)
	}
	m.SeenHours[h/64] |= 1 << (h % 64)
}

// seenHours are the hours of the week the method had allowed calls in,
// if the profile knows them (known false: kept before it did).
func (m *Method) seenHours() (hours [168]bool, known bool) {
	if len(m.SeenHours) != 3 {
		return hours, false
	}
	for h := range hours {
		hours[h] = m.SeenHours[h/64]&(1<<(h%64)) != 0
	}
	return hours, true
}

// Baseline is a decayed mean and mean absolute deviation of a caller's
// hourly totals of one method, over the hours it called.
type Baseline struct {
	Mean, Dev float64
	Hours     int
}

func (b *Baseline) add(x, alpha float64) {
	if b.Hours == 0 {
		b.Mean, b.Dev = x, 0
	} else {
		d := math.Abs(x - b.Mean)
		b.Mean += alpha * (x - b.Mean)
		b.Dev += alpha * (d - b.Dev)
	}
	b.Hours++
}

type hourKey struct {
	server, peer, method string
	hour                 int64 // Unix hour
}

type hourTotal struct {
	calls, bytes, denials int64
	flagged               bool
}

// Engine keeps the profiles and finds anomalies.
type Engine struct {
	cfg      Config
	profiles map[string]*Profile
	// hours are the totals of the hours not yet folded into the
	// baselines, by server; mark the latest hour each server's counts
	// have reached.
	hours map[string]map[hourKey]*hourTotal
	mark  map[string]int64
	// denials are recent denials by (server, peer), per minute.
	denials map[[2]string]map[int64]int64
	// flagged keeps from reporting an anomaly twice in its hour: the key
	// of each reported one, with its Unix hour.
	flagged map[string]int64
}

// New returns an engine with no profiles.
func New(cfg Config) *Engine {
	cfg.defaults()
	return &Engine{cfg: cfg, profiles: map[string]*Profile{}, hours: map[string]map[hourKey]*hourTotal{}, mark: map[string]int64{},
		denials: map[[2]string]map[int64]int64{}, flagged: map[string]int64{}}
}

// Profiles returns the profiles, by server.
func (e *Engine) Profiles() map[string]*Profile { return e.profiles }

// SetProfile installs a stored profile (at start).
func (e *Engine) SetProfile(p *Profile) { e.profiles[p.Server] = p }

// Add takes one traffic count and returns the anomalies it shows at once:
// a new caller or method, an hour of the week the caller has no calls in,
// a denial burst, and an hour's volume past the baseline.
func (e *Engine) Add(tc *typesv1.TrafficCount) []Anomaly {
	at := time.Unix(tc.GetMinute(), 0).UTC()
	p := e.profiles[tc.GetServer()]
	if p == nil {
		p = &Profile{Server: tc.GetServer(), Since: at, Callers: map[string]*Caller{}}
		e.profiles[tc.GetServer()] = p
	}
	// The counts' own time moves the server's hours on: a count of a
	// later hour folds the ones before it (a service's reports come in
	// order of time), as Advance does on the CA's clock for servers that
	// have gone quiet.
	if h := tc.GetMinute() / 3600; h > e.mark[tc.GetServer()] {
		e.mark[tc.GetServer()] = h
		e.fold(tc.GetServer(), h)
	}
	learning := at.Sub(p.Since) < e.cfg.Learn
	var out []Anomaly
	flag := func(kind, detail string) {
		hour := at.Unix() / 3600
		key := kind + "|" + tc.GetServer() + "|" + tc.GetPeer() + "|" + tc.GetMethod()
		if kind == NewCaller || kind == UnusualTime {
			key = kind + "|" + tc.GetServer() + "|" + tc.GetPeer()
		}
		if h, ok := e.flagged[key]; ok && h == hour {
			return
		}
		e.flagged[key] = hour
		out = append(out, Anomaly{Kind: kind, Server: tc.GetServer(), Peer: tc.GetPeer(), Method: tc.GetMethod(), At: at, Detail: detail})
	}

	c := p.Callers[tc.GetPeer()]
	if c == nil {
		if len(p.Callers) >= e.cfg.MaxCallers {
			p.Dropped++
			if !learning {
				flag(NewCaller, "a caller this server has not seen (its profile is full: not learned)")
			}
			return out
		}
		if !learning {
			flag(NewCaller, "a caller this server has never seen")
		}
		c = &Caller{FirstSeen: at, Decayed: at, Methods: map[string]*Method{}}
		p.Callers[tc.GetPeer()] = c
	} else if !learning && tc.GetCalls() > tc.GetDenials() {
		// An hour of the week with no calls of this caller in the
		// baseline (nor in the hour before or after).
		c.decay(at, e.cfg.HalfLife)
		h := hourOfWeek(at)
		near := c.Hours[(h+167)%168] + c.Hours[h] + c.Hours[(h+1)%168]
		total := 0.0
		for _, w := range c.Hours {
			total += w
		}
		if total >= 20 && near < total*1e-3 {
			flag(UnusualTime, fmt.Sprintf("%s %02d:00 UTC: the caller's calls in this hour of the week weigh %.2g of %.0f", at.Weekday(), at.Hour(), near, total))
		}
	}
	m := c.Methods[tc.GetMethod()]
	if m == nil {
		if len(c.Methods) >= e.cfg.MaxMethods {
			p.Dropped++
			return out
		}
		if !learning && c.FirstSeen.Before(at) {
			flag(NewMethod, "a method this caller has never called on this server")
		}
		m = &Method{FirstSeen: at}
		c.Methods[tc.GetMethod()] = m
	}
	c.LastSeen, m.LastSeen = at, at
	c.decay(at, e.cfg.HalfLife)
	c.Hours[hourOfWeek(at)] += float64(tc.GetCalls() - tc.GetDenials())
	if tc.GetCalls() > tc.GetDenials() {
		m.seenIn(hourOfWeek(at))
	}
	m.Denials += tc.GetDenials()

	// Denials: a burst in five minutes.
	if n := tc.GetDenials(); n > 0 {
		dk := [2]string{tc.GetServer(), tc.GetPeer()}
		if e.denials[dk] == nil {
			e.denials[dk] = map[int64]int64{}
		}
		e.denials[dk][tc.GetMinute()] += n
		sum := int64(0)
		for minute, d := range e.denials[dk] {
			if tc.GetMinute()-minute < 300 && minute <= tc.GetMinute() {
				sum += d
			}
		}
		if sum >= e.cfg.DenialBurst {
			flag(Denials, fmt.Sprintf("%d calls denied in five minutes", sum))
		}
	}

	// Volume: the hour so far against the baseline.
	hk := hourKey{tc.GetServer(), tc.GetPeer(), tc.GetMethod(), tc.GetMinute() / 3600}
	byHour := e.hours[tc.GetServer()]
	if byHour == nil {
		byHour = map[hourKey]*hourTotal{}
		e.hours[tc.GetServer()] = byHour
	}
	ht := byHour[hk]
	if ht == nil {
		ht = &hourTotal{}
		byHour[hk] = ht
	}
	ht.calls += tc.GetCalls()
	ht.bytes += tc.GetBytesIn() + tc.GetBytesOut()
	ht.denials += tc.GetDenials()
	if !learning && !ht.flagged {
		if d := e.overVolume(m.Calls, float64(ht.calls), e.cfg.VolumeFloor); d != "" {
			ht.flagged = true
			flag(Volume, "calls this hour: "+d)
		} else if d := e.overVolume(m.Bytes, float64(ht.bytes), 1024*e.cfg.VolumeFloor); d != "" {
			ht.flagged = true
			flag(Volume, "bytes this hour: "+d)
		}
	}
	return out
}

// overVolume says why x is far above b, or "".
func (e *Engine) overVolume(b Baseline, x, floor float64) string {
	if b.Hours < e.cfg.VolumeHours {
		return ""
	}
	sd := 1.4826 * b.Dev
	if x > b.Mean+e.cfg.VolumeK*sd && x > e.cfg.VolumeRatio*b.Mean && x > floor {
		return fmt.Sprintf("%.0f against a baseline of %.0f ± %.0f", x, b.Mean, sd)
	}
	return ""
}

// Advance folds every hour that ended before now into the baselines, and
// forgets denials older than five minutes.
func (e *Engine) Advance(now time.Time) {
	cur := now.Unix() / 3600
	for server := range e.hours {
		e.fold(server, cur)
	}
	for dk, byMinute := range e.denials {
		for minute := range byMinute {
			if now.Unix()-minute >= 300 {
				delete(byMinute, minute)
			}
		}
		if len(byMinute) == 0 {
			delete(e.denials, dk)
		}
	}
	for key, hour := range e.flagged {
		if hour < cur {
			delete(e.flagged, key)
		}
	}
}

// fold folds the hours of server before hour into the baselines.
func (e *Engine) fold(server string, hour int64) {
	byHour := e.hours[server]
	keys := make([]hourKey, 0, len(byHour))
	for k := range byHour {
		if k.hour < hour {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].hour < keys[j].hour })
	alpha := 1 - math.Pow(0.5, float64(time.Hour)/float64(e.cfg.HalfLife))
	p := e.profiles[server]
	for _, k := range keys {
		ht := byHour[k]
		delete(byHour, k)
		if p == nil {
			continue
		}
		c := p.Callers[k.peer]
		if c == nil {
			continue
		}
		m := c.Methods[k.method]
		if m == nil {
			continue
		}
		// Baselines need far fewer hours than a half-life holds to be
		// useful: weigh the first ones more, as if averaging them
		// plainly.
		a := math.Max(alpha, 1/float64(m.Calls.Hours+1))
		m.Calls.add(float64(ht.calls), a)
		m.Bytes.add(float64(ht.bytes), a)
	}
	if len(byHour) == 0 {
		delete(e.hours, server)
	}
}

// decay brings the caller's hour weights to at.
func (c *Caller) decay(at time.Time, halfLife time.Duration) {
	if !at.After(c.Decayed) {
		return
	}
	f := math.Pow(0.5, float64(at.Sub(c.Decayed))/float64(halfLife))
	for i := range c.Hours {
		c.Hours[i] *= f
	}
	c.Decayed = at
}

// hourOfWeek numbers the hours of the week from Monday 00:00 UTC.
func hourOfWeek(t time.Time) int {
	t = t.UTC()
	day := (int(t.Weekday()) + 6) % 7
	return day*24 + t.Hour()
}
