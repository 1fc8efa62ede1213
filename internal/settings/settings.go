// Package settings loads a program's settings with viper from, in rising
// precedence: defaults, a YAML file, environment variables and flags.
//
// It is strict where viper is lenient: a file that does not parse or names
// a key the program does not know stops start-up with the key's name,
// because a misspelt security setting silently falling back to its default
// is worse than not starting.
package settings

import (
	"fmt"
	"os"
	"slices"
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
	var maps []string
	for _, k := range keys {
		known = append(known, k.Name)
		if k.Map {
			maps = append(maps, k.Name+".")
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
		inMap := slices.ContainsFunc(maps, func(prefix string) bool {
			// One level of names below a map key, no deeper.
			rest, ok := strings.CutPrefix(k, prefix)
			return ok && rest != "" && !strings.Contains(rest, ".")
		})
		if !inMap && !slices.Contains(known, k) {
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

// StringMap reads a map setting of names to strings.
func StringMap(v *viper.Viper, key string) map[string]string {
	out := map[string]string{}
	for k, val := range v.GetStringMap(key) {
		out[k] = fmt.Sprint(val)
	}
	return out
}

// ForCommand loads keys for a command: the file named by its --config flag
// (or, without one, by the environment variable configEnv), then the
// environment, then its flags. decode turns the result into the program's
// configuration; its errors are indented under one heading.
func ForCommand[T any](fs *pflag.FlagSet, configEnv string, keys []Key, decode func(*viper.Viper) (T, error)) (T, error) {
	var zero T
	file, _ := fs.GetString("config")
	if file == "" {
		file = os.Getenv(configEnv)
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
