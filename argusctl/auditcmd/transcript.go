package auditcmd

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/cmdutil"
	"github.com/argus-remote/argus/controlplane/signing"
	"github.com/argus-remote/argus/controlplane/transcript"
)

// readBounded reads a file of at most max bytes.
func readBounded(path string, max int64) ([]byte, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	b, err := io.ReadAll(io.LimitReader(file, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: over %d bytes", path, max)
	}
	return b, nil
}

func newCmdVerifyTranscript(f *cmdutil.Factory) *cobra.Command {
	var keyPath string
	cmd := &cobra.Command{
		Use:   "verify-transcript FILE",
		Short: "Check a session transcript offline: signature, hashes, chain links, no hole in its span; exit 1 if anything is wrong",
		Long: `Check a session transcript offline, with no server: the signature by the
control-plane key (--key, as 'argusctl audit signing-key' or GET
/v1/signing-key gives it), each action's hash from its canonical bytes,
each link of the chain, and that every sequence number from the session's
first action to its last is there. Each problem is printed with the
sequence number it is about. Exit 1 if there is any.`,
		Example: `  argusctl audit verify-transcript session.transcript.json --key control-plane.pub`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kb, err := readBounded(keyPath, 64<<10)
			if err != nil {
				return fmt.Errorf("--key: %w", err)
			}
			pub, err := transcript.ParsePublicKey(kb)
			if err != nil {
				return fmt.Errorf("--key %s: %w", keyPath, err)
			}
			data, err := readBounded(args[0], transcript.MaxBytes)
			if err != nil {
				return err
			}
			t, err := transcript.Parse(data)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			problems := transcript.Verify(t, pub)
			if f.Output() == "json" {
				_ = cmdutil.PrintJSON(f.IOStreams, map[string]any{
					"valid": len(problems) == 0, "session": t.Session.ID, "key_id": signing.KeyID(pub),
					"first_seq": t.FirstSeq, "last_seq": t.LastSeq, "actions": t.Actions, "entries": len(t.Entries),
					"problems": append([]transcript.Problem{}, problems...),
				})
			} else {
				out := f.IOStreams.Out
				fmt.Fprintf(out, "session %s (tenant %s): %d actions, seq %d..%d, %d entries\n",
					t.Session.ID, t.Session.TenantID, t.Actions, t.FirstSeq, t.LastSeq, len(t.Entries))
				for _, p := range problems {
					fmt.Fprintf(out, "- %s\n", p)
				}
				if len(problems) == 0 {
					fmt.Fprintf(out, "verified: signed by key %s; every hash, every link, and no hole from seq %d to %d\n",
						signing.KeyID(pub), t.FirstSeq, t.LastSeq)
				}
			}
			if len(problems) > 0 {
				return fmt.Errorf("the transcript does not verify: %d problem(s)", len(problems))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&keyPath, "key", "", "the control plane's public key: PEM, or base64 of its 32 bytes (required)")
	_ = cmd.MarkFlagRequired("key")
	return cmd
}

func newCmdSigningKey(f *cmdutil.Factory) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "signing-key",
		Short: "Fetch the control plane's public key (no credential needed; it is not secret)",
		Long: `Fetch the control plane's public key, which signs transcripts (and the
activations and commands agents pin it for), as PEM. Compare its key id
with the one a transcript names, and with the key the tenant's agent
pinned at enrollment.`,
		Example: `  argusctl audit signing-key --out control-plane.pub`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			var k struct {
				KeyID     string `json:"key_id"`
				PublicKey string `json:"public_key"`
				PEM       string `json:"pem"`
			}
			if err := c.Do(cmd.Context(), "GET", "/v1/signing-key", nil, &k); err != nil {
				return err
			}
			pub, err := transcript.ParsePublicKey([]byte(k.PEM))
			if err != nil {
				return fmt.Errorf("the server's key: %w", err)
			}
			if signing.KeyID(pub) != k.KeyID {
				return errors.New("the server's key does not match the key id it names")
			}
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, k)
			}
			if out == "" || out == "-" {
				_, err := io.WriteString(f.IOStreams.Out, k.PEM)
				return err
			}
			if err := os.WriteFile(out, []byte(k.PEM), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(f.IOStreams.ErrOut, "key %s written to %s\n", k.KeyID, out)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "write the PEM to this file (default stdout)")
	return cmd
}
