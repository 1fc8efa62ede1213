// Package patchcmd is `argusctl patch`: make a patch-signing key pair,
// build and sign a hotfix bundle, and verify one, all offline.
package patchcmd

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/cmdutil"
	"github.com/argus-remote/argus/patch"
)

// NewCmdPatch builds `argusctl patch`.
func NewCmdPatch(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{Use: "patch", Short: "Make signing keys, build and verify hotfix bundles (offline)"}
	cmd.AddCommand(newCmdKeygen(f), newCmdBuild(f), newCmdVerify(f))
	return cmd
}

func newCmdKeygen(f *cmdutil.Factory) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Make an ed25519 patch-signing key pair",
		Long: `Make DIR/patch-signing.key (private, 0600) and DIR/patch-signing.pub. The
public key goes into the tenant's agent configuration (patch-keys); agents
never accept a key over the network.`,
		Example: `  argusctl patch keygen --out ~/.argus-keys`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			pub, priv, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				return err
			}
			der, err := x509.MarshalPKCS8PrivateKey(priv)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(out, 0o700); err != nil {
				return err
			}
			keyPath, pubPath := filepath.Join(out, "patch-signing.key"), filepath.Join(out, "patch-signing.pub")
			kf, err := os.OpenFile(keyPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fmt.Errorf("%w (refusing to overwrite a key)", err)
			}
			err = pem.Encode(kf, &pem.Block{Type: "PRIVATE KEY", Bytes: der})
			if cerr := kf.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			if err := os.WriteFile(pubPath, []byte(patch.EncodePublic(pub)+"\n"), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(f.IOStreams.Out, "private key: %s (keep it offline)\npublic key:  %s (key id %s)\n", keyPath, pubPath, patch.KeyID(pub))
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory for the key pair (required)")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func loadKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("not a PEM private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	priv, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, errors.New("not an ed25519 key")
	}
	return priv, nil
}

func newCmdBuild(f *cmdutil.Factory) *cobra.Command {
	var keyPath, id, version, description, notAfter, root, series, out string
	cmd := &cobra.Command{
		Use:   "build FILE=TARGET...",
		Short: "Build and sign a hotfix bundle",
		Long: `Build one bundle file: a manifest (id, version, series, description, created,
not-after, and per file its target relative to the named patch root,
sha256, mode and size), the files, and an ed25519 signature over the
manifest. A file's mode is taken from the local file.`,
		Example: `  argusctl patch build --key keys/patch-signing.key --id HF-2026-007 --version 4.2.1 \
    --root streamer --not-after 2026-12-31 --out hf-007.bundle \
    build/streamer=bin/streamer build/streamer.yaml=etc/streamer.yaml`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := loadKey(keyPath)
			if err != nil {
				return fmt.Errorf("--key: %w", err)
			}
			m := patch.Manifest{ID: id, Version: version, Series: series, Description: description, Root: root}
			if notAfter != "" {
				t, err := time.Parse("2006-01-02", notAfter)
				if err != nil {
					if t, err = time.Parse(time.RFC3339, notAfter); err != nil {
						return fmt.Errorf("--not-after: a date (2026-12-31) or RFC 3339 time")
					}
				} else {
					t = t.Add(24*time.Hour - time.Second)
				}
				m.NotAfter = t.UTC()
			}
			contents := map[string][]byte{}
			for _, a := range args {
				local, target, ok := strings.Cut(a, "=")
				if !ok {
					return fmt.Errorf("%q: give FILE=TARGET", a)
				}
				data, err := os.ReadFile(local)
				if err != nil {
					return err
				}
				fi, err := os.Stat(local)
				if err != nil {
					return err
				}
				contents[target] = data
				m.Files = append(m.Files, patch.File{Target: target, Mode: fmt.Sprintf("%04o", fi.Mode().Perm())})
			}
			b, err := patch.Build(m, contents, key)
			if err != nil {
				return err
			}
			if err := os.WriteFile(out, b, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(f.IOStreams.Out, "built %s: patch %s version %s, %d file(s), %d bytes\n", out, id, version, len(m.Files), len(b))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&keyPath, "key", "", "patch-signing private key (required)")
	fl.StringVar(&id, "id", "", "patch id (required)")
	fl.StringVar(&version, "version", "", "version, dotted numbers (required)")
	fl.StringVar(&description, "description", "", "what it fixes")
	fl.StringVar(&notAfter, "not-after", "", "agents refuse it after this date")
	fl.StringVar(&root, "root", "", "named patch root on the agent (required)")
	fl.StringVar(&series, "series", "", "version series (default: the root)")
	fl.StringVar(&out, "out", "", "bundle file to write (required)")
	for _, n := range []string{"key", "id", "version", "root", "out"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}

func newCmdVerify(f *cmdutil.Factory) *cobra.Command {
	var pubPath string
	cmd := &cobra.Command{
		Use:     "verify --pub PUB BUNDLE",
		Short:   "Verify a bundle's signature and digests without applying it",
		Example: `  argusctl patch verify --pub keys/patch-signing.pub hf-007.bundle`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pb, err := os.ReadFile(pubPath)
			if err != nil {
				return err
			}
			pub, err := patch.ParsePublic(string(pb))
			if err != nil {
				return err
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			m, _, err := patch.Open(data, []ed25519.PublicKey{pub}, time.Now())
			var pe *patch.Error
			if errors.As(err, &pe) && pe.Code == patch.CodeUnknownSigner {
				return fmt.Errorf("%s: the bundle is signed by key %s, not by the key in %s (key %s)",
					pe.Code, patch.SignerKeyID(data), pubPath, patch.KeyID(pub))
			}
			if err != nil {
				return err
			}
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, m)
			}
			fmt.Fprintf(f.IOStreams.Out, "valid: patch %s version %s (series %s, root %s), %d file(s)\n", m.ID, m.Version, m.Series, m.Root, len(m.Files))
			for _, fl := range m.Files {
				fmt.Fprintf(f.IOStreams.Out, "  %s %s %d bytes sha256 %s\n", fl.Mode, fl.Target, fl.Size, fl.SHA256)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&pubPath, "pub", "", "patch-signing public key (required)")
	_ = cmd.MarkFlagRequired("pub")
	return cmd
}
