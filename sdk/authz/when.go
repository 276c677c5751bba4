package authz

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Window is a weekly window of time in which a rule applies (Rule.When).
type Window struct {
	// Days the window starts on; none means every day. A window that
	// ends past midnight (End before Start) runs into the next day.
	Days []time.Weekday
	// Start and End are "HH:MM"; End may be "24:00". Start is in the
	// window, End is not.
	Start, End string
	// Location is the time zone; nil means UTC.
	Location *time.Location
}

// cwindow is a compiled Window: minutes of the day, and the days as bits.
type cwindow struct {
	days       uint8 // bit d: weekday d; 0x7f every day
	start, end int
	loc        *time.Location
}

func compileWindow(w Window) (cwindow, error) {
	start, err := clock(w.Start, false)
	if err != nil {
		return cwindow{}, fmt.Errorf("start: %w", err)
	}
	end, err := clock(w.End, true)
	if err != nil {
		return cwindow{}, fmt.Errorf("end: %w", err)
	}
	if start == end {
		return cwindow{}, errors.New("start and end are the same time: an empty window")
	}
	c := cwindow{start: start, end: end, loc: w.Location}
	if c.loc == nil {
		c.loc = time.UTC
	}
	for _, d := range w.Days {
		if d < time.Sunday || d > time.Saturday {
			return cwindow{}, fmt.Errorf("day %d is not a weekday", d)
		}
		c.days |= 1 << d
	}
	if c.days == 0 {
		c.days = 0x7f
	}
	return c, nil
}

// clock reads "HH:MM" as minutes of the day; "24:00" only when end.
func clock(s string, end bool) (int, error) {
	var h, m int
	if len(s) != 5 || s[2] != ':' {
		return 0, fmt.Errorf("%q: want HH:MM", s)
	}
	if _, err := fmt.Sscanf(s, "%02d:%02d", &h, &m); err != nil || m > 59 || h > 24 || (h == 24 && (m != 0 || !end)) {
		return 0, fmt.Errorf("%q: want HH:MM, 00:00 to 23:59 (24:00 as an end)", s)
	}
	return h*60 + m, nil
}

// contains reports whether t falls in the window.
func (w cwindow) contains(t time.Time) bool {
	t = t.In(w.loc)
	minute := t.Hour()*60 + t.Minute()
	day := t.Weekday()
	if w.start < w.end {
		return w.days&(1<<day) != 0 && minute >= w.start && minute < w.end
	}
	// Past midnight: the evening of a listed day, or the early hours of
	// the day after one.
	yesterday := (day + 6) % 7
	return (w.days&(1<<day) != 0 && minute >= w.start) || (w.days&(1<<yesterday) != 0 && minute < w.end)
}

// weekdays reads "mon".."sun".
var weekdays = map[string]time.Weekday{"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday}

// parseDay reads a day of a policy's window.
func parseDay(s string) (time.Weekday, error) {
	d, ok := weekdays[strings.ToLower(s)]
	if !ok {
		return 0, fmt.Errorf("day %q: want mon, tue, wed, thu, fri, sat or sun", s)
	}
	return d, nil
}
