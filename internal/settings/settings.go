// Package settings loads a program's settings with viper from, in rising
// precedence: defaults, a YAML file, environment variables and flags.
//
// It is strict where viper is lenient: a file that does not parse or names
// a key the program does not know stops start-up with the key's name,
// because a misspelt security setting silently falling back to its default
// is worse than not starting.
package settings

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// Key is one setting.
type Key struct {
	// Name is the key in the YAML file and the flag name ("http-addr").
	Name string
	// Env lists the environment variables that set it; the first set wins.
	Env []string
	// Default applies when nothing else sets it.
	Default any
	// Map marks a key whose value is a map of names the program does not
	// know in advance (log-files: {streamer: /var/log/...}).
	Map bool
}

// Load binds keys to their environment variables and to the flags in fs
// that share their names, then merges configFile (if not empty) into v.
func Load(v *viper.Viper, fs *pflag.FlagSet, configFile string, keys []Key) error {
	known := make([]string, 0, len(keys))
	var mapPrefixes []string
	for _, k := range keys {
		known = append(known, k.Name)
		if k.Map {
			mapPrefixes = append(mapPrefixes, k.Name+".")
		}
		if k.Default != nil {
			v.SetDefault(k.Name, k.Default)
		}
		if len(k.Env) > 0 {
			if err := v.BindEnv(append([]string{k.Name}, k.Env...)...); err != nil {
				return err
			}
		}
		if fs != nil {
			if f := fs.Lookup(k.Name); f != nil {
				if err := v.BindPFlag(k.Name, f); err != nil {
					return err
				}
			}
		}
	}
	if configFile == "" {
		return nil
	}
	fv := viper.New()
	fv.SetConfigFile(configFile)
	fv.SetConfigType("yaml")
	if err := fv.ReadInConfig(); err != nil {
		return fmt.Errorf("config file %s: %w", configFile, err)
	}
	for _, k := range fv.AllKeys() {
		var mapKey, entry string
		for _, prefix := range mapPrefixes {
			if rest, ok := strings.CutPrefix(k, prefix); ok && rest != "" {
				mapKey, entry = strings.TrimSuffix(prefix, "."), rest
			}
		}
		switch {
		case mapKey != "" && strings.Contains(entry, "."):
			// One level of names below a map key, no deeper.
			name, _, _ := strings.Cut(entry, ".")
			return fmt.Errorf("config file %s: invalid %s: %s: the value is a mapping, not a string", configFile, mapKey, name)
		case mapKey != "" && fv.Get(k) == nil:
			return fmt.Errorf("config file %s: invalid %s: %s: the value is empty", configFile, mapKey, entry)
		case mapKey != "":
		case slices.Contains(known, k):
		default:
			// A mapping given to a key that takes a list or one value.
			if top, _, ok := strings.Cut(k, "."); ok && slices.Contains(known, top) {
				return fmt.Errorf("config file %s: invalid %s: give a list or one value, not a mapping", configFile, top)
			}
			return fmt.Errorf("config file %s: unknown key %q (known keys: %s)", configFile, k, strings.Join(known, ", "))
		}
	}
	return v.MergeConfigMap(fv.AllSettings())
}

// List reads a list setting given as a YAML list, a flag list, or a
// string separated by commas or spaces (as environment variables give it).
func List(v *viper.Viper, key string) []string {
	var items []string
	switch val := v.Get(key).(type) {
	case nil:
	case string:
		items = strings.FieldsFunc(val, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
	case []string:
		items = val
	case []any:
		for _, x := range val {
			items = append(items, fmt.Sprint(x))
		}
	default:
		items = []string{fmt.Sprint(val)}
	}
	out := items[:0:0]
	for _, s := range items {
		// A flag given as "--x a,b" arrives split; one from env may not.
		for _, part := range strings.Split(s, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
	}
	return out
}

// EnvNames returns how a key's environment variables are spelt, for error
// messages ("http-addr (ARGUS_HTTP_ADDR)").
func EnvNames(keys []Key, name string) string {
	for _, k := range keys {
		if k.Name == name && len(k.Env) > 0 {
			return name + " (" + strings.Join(k.Env, ", ") + ")"
		}
	}
	return name
}

// StringMap reads a map setting of names to strings: a YAML mapping
// whose every value is a string. Anything else (a list, a scalar, a value
// that is a number, a list or empty) is an error, never an empty map: a
// tenant's allowlist that does not say what it means must not start.
func StringMap(v *viper.Viper, key string) (map[string]string, error) {
	out := map[string]string{}
	var entries map[string]any
	switch val := v.Get(key).(type) {
	case nil:
		return out, nil
	case map[string]any:
		entries = val
	case map[string]string:
		for k, s := range val {
			out[k] = s
		}
		return out, nil
	default:
		return nil, fmt.Errorf("give a mapping of names to values (%s:\n  NAME: VALUE), not %s", key, describe(val))
	}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(entries)) {
		s, ok := entries[name].(string)
		if !ok {
			errs = append(errs, fmt.Errorf("%s: the value is %s, not a string", name, describe(entries[name])))
			continue
		}
		out[name] = s
	}
	return out, errors.Join(errs...)
}

// Strings reads a list setting strictly: a YAML list of strings, or one
// string separated by commas or spaces (as an environment variable or a
// flag gives it). A mapping, or a list holding anything but strings, is
// an error. (List, which the server uses, is lenient.)
func Strings(v *viper.Viper, key string) ([]string, error) {
	switch val := v.Get(key).(type) {
	case nil, string, []string:
	case []any:
		for i, x := range val {
			if _, ok := x.(string); !ok {
				return nil, fmt.Errorf("item %d is %s, not a string", i+1, describe(x))
			}
		}
	default:
		return nil, fmt.Errorf("give a list (%s: [A, B]), not %s", key, describe(val))
	}
	return List(v, key), nil
}

// Value checks that a setting holds one value (a string, number or
// boolean), not a list or a mapping.
func Value(v *viper.Viper, key string) error {
	switch val := v.Get(key).(type) {
	case []any, []string, map[string]any, map[string]string:
		return fmt.Errorf("give one value, not %s", describe(val))
	}
	return nil
}

// Bool reads a boolean setting: true or false (or what strconv.ParseBool
// reads, as an environment variable gives it). Anything else is an error,
// never false.
func Bool(v *viper.Viper, key string) (bool, error) {
	switch val := v.Get(key).(type) {
	case nil:
		return false, nil
	case bool:
		return val, nil
	case string:
		b, err := strconv.ParseBool(strings.TrimSpace(val))
		if err != nil {
			return false, fmt.Errorf("%q is not true or false", val)
		}
		return b, nil
	default:
		return false, fmt.Errorf("%s is not true or false", describe(val))
	}
}

// describe names a YAML value's shape for an error message.
func describe(x any) string {
	switch x := x.(type) {
	case nil:
		return "empty"
	case string:
		return fmt.Sprintf("the string %q", x)
	case []any, []string:
		return "a list"
	case map[string]any, map[string]string:
		return "a mapping"
	case bool:
		return fmt.Sprintf("the boolean %v", x)
	default:
		return fmt.Sprintf("the number %v", x)
	}
}

// ForCommand loads keys for a command: the file named by its --config flag
// (or, without one, by the environment variable configEnv), then the
// environment, then its flags. decode turns the result into the program's
// configuration; its errors are indented under one heading.
func ForCommand[T any](fs *pflag.FlagSet, configEnv string, keys []Key, decode func(*viper.Viper) (T, error)) (T, error) {
	var zero T
	// The flag's default may be a file (a packaged build's
	// /etc/argus/...): the environment still overrides it, and a --config
	// given on the command line overrides both.
	file, _ := fs.GetString("config")
	if !fs.Changed("config") || file == "" {
		if env := os.Getenv(configEnv); env != "" {
			file = env
		}
	}
	v := viper.New()
	if err := Load(v, fs, file, keys); err != nil {
		return zero, err
	}
	cfg, err := decode(v)
	if err != nil {
		return zero, fmt.Errorf("configuration:\n  %s", strings.ReplaceAll(err.Error(), "\n", "\n  "))
	}
	return cfg, nil
}
