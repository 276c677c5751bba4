// Package selector parses and validates workload selectors such as
// "unix:uid:1000" or "k8s:ns:payments".
package selector

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Selector is one attribute of a workload: a type ("unix", "k8s") and a value
// whose first colon-separated part is the key ("uid:1000").
type Selector struct {
	Type  string
	Value string
}

// String returns the "type:value" form.
func (s Selector) String() string { return s.Type + ":" + s.Value }

// Key returns the part of the value before its first colon ("uid").
func (s Selector) Key() string {
	k, _, _ := strings.Cut(s.Value, ":")
	return k
}

type keyCheck func(v string) error

func anyValue(v string) error {
	if v == "" {
		return fmt.Errorf("empty value")
	}
	return nil
}

func number(v string) error {
	if _, err := strconv.ParseUint(v, 10, 32); err != nil {
		return fmt.Errorf("%q is not a non-negative 32-bit number", v)
	}
	return nil
}

func absPath(v string) error {
	if !strings.HasPrefix(v, "/") {
		return fmt.Errorf("%q is not an absolute path", v)
	}
	return nil
}

func digest(v string) error {
	if len(v) != 64 || strings.Trim(v, "0123456789abcdef") != "" {
		return fmt.Errorf("%q is not a lowercase hex SHA-256 digest", v)
	}
	return nil
}

func alnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }

// name accepts a Kubernetes name or label value, generously: 1 to 253
// letters, digits, '-', '_' or '.', starting and ending with a letter or
// digit.
func name(v string) error {
	ok := len(v) >= 1 && len(v) <= 253 && alnum(v[0]) && alnum(v[len(v)-1])
	for i := 0; ok && i < len(v); i++ {
		c := v[i]
		ok = alnum(c) || c == '-' || c == '_' || c == '.'
	}
	if !ok {
		return fmt.Errorf("%q is not a valid Kubernetes name", v)
	}
	return nil
}

func label(v string) error {
	k, val, ok := strings.Cut(v, ":")
	if !ok || k == "" {
		return fmt.Errorf("%q is not key:value", v)
	}
	if val != "" {
		return name(val)
	}
	return nil
}

// known lists the selector types and keys an entry may use.
var known = map[string]map[string]keyCheck{
	"unix": {
		"uid":    number,
		"gid":    number,
		"user":   anyValue,
		"group":  anyValue,
		"path":   absPath,
		"sha256": digest,
	},
	"k8s": {
		"ns":              name,
		"sa":              name,
		"pod-name":        name,
		"pod-uid":         anyValue,
		"pod-label":       label,
		"container-name":  name,
		"container-image": anyValue,
		"node-name":       name,
	},
}

// Parse reads "type:key:value", e.g. "unix:uid:1000", and validates it.
func Parse(s string) (Selector, error) {
	typ, value, ok := strings.Cut(s, ":")
	if !ok {
		return Selector{}, fmt.Errorf("selector %q: want type:key:value", s)
	}
	sel := Selector{Type: typ, Value: value}
	if err := sel.Validate(); err != nil {
		return Selector{}, err
	}
	return sel, nil
}

// Validate checks that the type and key are known and the value fits the key.
func (s Selector) Validate() error {
	keys, ok := known[s.Type]
	if !ok {
		return fmt.Errorf("selector %q: unknown type %q (known: unix, k8s)", s.String(), s.Type)
	}
	key, value, ok := strings.Cut(s.Value, ":")
	if !ok {
		return fmt.Errorf("selector %q: want %s:key:value", s.String(), s.Type)
	}
	check, ok := keys[key]
	if !ok {
		return fmt.Errorf("selector %q: unknown %s key %q (known: %s)", s.String(), s.Type, key, strings.Join(knownKeys(s.Type), ", "))
	}
	if err := check(value); err != nil {
		return fmt.Errorf("selector %q: %v", s.String(), err)
	}
	return nil
}

func knownKeys(typ string) []string {
	var ks []string
	for k := range known[typ] {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// Canonical returns the selectors sorted and without duplicates.
func Canonical(sels []Selector) []Selector {
	out := append([]Selector(nil), sels...)
	sort.Slice(out, func(i, j int) bool {
		if out[i].Type != out[j].Type {
			return out[i].Type < out[j].Type
		}
		return out[i].Value < out[j].Value
	})
	n := 0
	for i, s := range out {
		if i > 0 && s == out[n-1] {
			continue
		}
		out[n] = s
		n++
	}
	return out[:n]
}

// SubsetOf reports whether every selector of want is in have.
func SubsetOf(want, have []Selector) bool {
	set := make(map[Selector]struct{}, len(have))
	for _, s := range have {
		set[s] = struct{}{}
	}
	for _, s := range want {
		if _, ok := set[s]; !ok {
			return false
		}
	}
	return true
}

// PodUID is the selector that names one pod, "k8s:pod-uid:<uid>": what a
// pod-derived entry selects, and what workload attestation reports.
func PodUID(uid string) Selector { return Selector{Type: "k8s", Value: "pod-uid:" + uid} }

// PodUIDOf returns the pod UID that s names, if s is a pod-uid selector.
func PodUIDOf(s Selector) (string, bool) {
	if s.Type != "k8s" {
		return "", false
	}
	return strings.CutPrefix(s.Value, "pod-uid:")
}
