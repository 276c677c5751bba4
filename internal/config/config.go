// Package config loads a component's YAML config file into its Config
// struct, strictly: an unknown key or a bad value is an error that names the
// key. Keys are the struct's json tags, the same names as the flags.
package config

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// LoadFile reads the YAML file at path into dst, a pointer to a struct.
func LoadFile(path string, dst any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if err := Load(raw, dst); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return nil
}

// Load reads YAML into dst, a pointer to a struct.
func Load(raw []byte, dst any) error {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return fmt.Errorf("not valid YAML: %w", err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(js, &m); err != nil {
		return fmt.Errorf("want a mapping of keys to values: %w", err)
	}
	fields := map[string]reflect.Value{}
	v := reflect.ValueOf(dst).Elem()
	for i := 0; i < v.NumField(); i++ {
		tag := strings.Split(v.Type().Field(i).Tag.Get("json"), ",")[0]
		if tag != "" && tag != "-" {
			fields[tag] = v.Field(i)
		}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f, ok := fields[k]
		if !ok {
			return fmt.Errorf("unknown key %q", k)
		}
		if err := json.Unmarshal(m[k], f.Addr().Interface()); err != nil {
			return fmt.Errorf("key %q: %v", k, err)
		}
	}
	return nil
}

// ErrVersion is returned by ParseFlags for --version: the program prints
// its version (internal/version) and exits.
var ErrVersion = errors.New("version requested")

// Duration is a time.Duration written as "90s" or "1h" in files and flags.
type Duration time.Duration

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration such as \"1h\" or \"90s\"")
	}
	return d.Set(s)
}

// Set implements flag.Value.
func (d *Duration) Set(s string) error {
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("negative duration %q", s)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) String() string { return FormatDuration(time.Duration(d)) }

// ParseDuration reads a duration as time.ParseDuration does ("90s",
// "1h30m"), and also with days in front: "7d", "1d12h".
func ParseDuration(s string) (time.Duration, error) {
	days, rest, ok := strings.Cut(s, "d")
	if !ok {
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q (write it as 90s, 30m, 1h or 7d)", s)
		}
		return d, nil
	}
	n, err := strconv.ParseUint(days, 10, 31)
	if err != nil || n > 100000 {
		return 0, fmt.Errorf("invalid duration %q (write it as 90s, 30m, 1h or 7d)", s)
	}
	d := time.Duration(n) * 24 * time.Hour
	if rest != "" {
		r, err := time.ParseDuration(rest)
		if err != nil || r < 0 {
			return 0, fmt.Errorf("invalid duration %q (write it as 90s, 30m, 1h or 7d)", s)
		}
		d += r
	}
	return d, nil
}

// FormatDuration writes d as ParseDuration reads it, without zero units:
// "1h", "30m", "1h30m", "1000h", "90s".
func FormatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// StringList is a repeatable flag and a YAML list.
type StringList []string

// Set implements flag.Value by appending.
func (l *StringList) Set(s string) error {
	*l = append(*l, s)
	return nil
}

func (l StringList) String() string { return strings.Join(l, ",") }

// ParseFlags reads a command's settings: defaults, then the YAML file named
// by --config, then the flags given on the command line, which win over the
// file wherever --config sits among them. register binds the flags to the
// fields of a T; the file's keys are the flag names.
func ParseFlags[T any](name string, args []string, stderr io.Writer, defaults func() T, register func(*flag.FlagSet, *T)) (T, error) {
	var path string
	var showVersion bool
	newSet := func(c *T, out io.Writer) *flag.FlagSet {
		fs := flag.NewFlagSet(name, flag.ContinueOnError)
		fs.SetOutput(out)
		fs.StringVar(&path, "config", "", "YAML config file; its keys are these flag names, and flags win over it")
		fs.BoolVar(&showVersion, "version", false, "print the version and exit")
		register(fs, c)
		return fs
	}
	// First pass: find --config.
	scratch := defaults()
	if err := newSet(&scratch, io.Discard).Parse(args); err != nil {
		fs := newSet(&scratch, stderr)
		if errors.Is(err, flag.ErrHelp) {
			fs.Usage()
		} else {
			fmt.Fprintln(stderr, err)
		}
		return scratch, err
	}
	if showVersion {
		return scratch, ErrVersion
	}
	c := defaults()
	if path != "" {
		if err := LoadFile(path, &c); err != nil {
			return c, err
		}
	}
	fs := newSet(&c, stderr)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return c, nil
}
