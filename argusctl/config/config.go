// Package config resolves argusctl's settings: flags, then ARGUSCTL_*
// environment variables, then the selected profile of the config file
// (~/.config/argusctl/config.yaml), then defaults.
//
//	profile: prod            # used when --profile is not given
//	profiles:
//	  prod:
//	    server: https://argus.example.net
//	    token: argus_pat_...
//	    ops-token: ...
package config

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// DefaultServer is the API address of a server running on this machine.
const DefaultServer = "http://127.0.0.1:8080"

// profileKeys are the keys a profile may hold; each is also a global flag
// and an ARGUSCTL_ environment variable.
var profileKeys = []string{"server", "token", "ops-token", "output"}

// Config is the resolved configuration.
type Config struct {
	Profile  string
	Server   string
	Token    string
	OpsToken string
	Output   string
	// File is the config file in use ("" when none exists).
	File string
}

// DefaultFile returns the config file's default path.
func DefaultFile() string {
	if d := os.Getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "argusctl", "config.yaml")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".config", "argusctl", "config.yaml")
}

// Dir returns the directory beside the config file where argusctl keeps
// its state (session tokens).
func Dir() string {
	if f := os.Getenv("ARGUSCTL_CONFIG"); f != "" {
		return filepath.Dir(f)
	}
	return filepath.Dir(DefaultFile())
}

// Load resolves the configuration from the global flags in fs.
func Load(fs *pflag.FlagSet) (*Config, error) {
	str := func(name string) string {
		if fs == nil {
			return ""
		}
		if f := fs.Lookup(name); f != nil && f.Changed {
			return f.Value.String()
		}
		return ""
	}
	file := firstNonEmpty(str("config"), os.Getenv("ARGUSCTL_CONFIG"))
	explicit := file != ""
	if !explicit {
		file = DefaultFile()
	}

	fileV := viper.New()
	if file != "" {
		fileV.SetConfigFile(file)
		fileV.SetConfigType("yaml")
		err := fileV.ReadInConfig()
		switch {
		case err == nil:
		case errors.Is(err, os.ErrNotExist) && !explicit:
			file = ""
		default:
			return nil, fmt.Errorf("config file %s: %w", file, err)
		}
	}
	if file != "" {
		if err := checkKeys(file, fileV.AllKeys()); err != nil {
			return nil, err
		}
	}

	c := &Config{File: file}
	c.Profile = firstNonEmpty(str("profile"), os.Getenv("ARGUSCTL_PROFILE"), fileV.GetString("profile"))
	if c.Profile != "" && file != "" && !fileV.IsSet("profiles."+c.Profile) {
		return nil, fmt.Errorf("config file %s has no profile %q", file, c.Profile)
	}
	get := func(key string) string {
		env := "ARGUSCTL_" + strings.ToUpper(strings.ReplaceAll(key, "-", "_"))
		fromProfile := ""
		if c.Profile != "" {
			fromProfile = fileV.GetString("profiles." + c.Profile + "." + key)
		}
		return firstNonEmpty(str(key), os.Getenv(env), fromProfile)
	}
	server, err := serverURL(firstNonEmpty(get("server"), DefaultServer))
	if err != nil {
		return nil, err
	}
	c.Server = server
	c.Token = get("token")
	c.OpsToken = get("ops-token")
	c.Output = firstNonEmpty(get("output"), "table")
	if c.Output != "table" && c.Output != "json" {
		return nil, fmt.Errorf("output %q: use table or json", c.Output)
	}
	return c, nil
}

// serverURL checks the API address: an http or https URL with a host
// (and perhaps a path prefix), or a bare HOST[:PORT], which means http://
// as the default does.
func serverURL(s string) (string, error) {
	withScheme := s
	if !strings.Contains(s, "://") {
		withScheme = "http://" + s
	}
	u, err := url.Parse(withScheme)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Hostname() == "" ||
		u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("server %q: use http://HOST:PORT or https://HOST[:PORT] (a bare HOST:PORT means http://)", s)
	}
	return withScheme, nil
}

func checkKeys(file string, keys []string) error {
	for _, k := range keys {
		if k == "profile" {
			continue
		}
		parts := strings.Split(k, ".")
		if len(parts) == 3 && parts[0] == "profiles" && slices.Contains(profileKeys, parts[2]) {
			continue
		}
		return fmt.Errorf("config file %s: unknown key %q (top level: profile, profiles; in a profile: %s)", file, k, strings.Join(profileKeys, ", "))
	}
	return nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
