package support

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/cmdutil"
)

// transcriptSummary is what argusctl reads of a transcript to say what it
// wrote; the file keeps every byte the server sent.
type transcriptSummary struct {
	Session struct {
		ID string `json:"id"`
	} `json:"session"`
	FirstSeq  int64             `json:"first_seq"`
	LastSeq   int64             `json:"last_seq"`
	Actions   int               `json:"actions"`
	Entries   []json.RawMessage `json:"entries"`
	Signature struct {
		KeyID string `json:"key_id"`
	} `json:"signature"`
}

func newCmdTranscript(f *cmdutil.Factory) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "transcript SESSION",
		Short: "Download a session's signed transcript (scope audit:read)",
		Long: `Download a session's transcript: every audited action of the session in
chain order with its events sequence number, hash and previous hash, the
links of other events in its span (hashes only), signed by the control
plane. Check it offline with 'argusctl audit verify-transcript'.`,
		Example: `  argusctl support transcript 5f0c... --out session.transcript.json
  argusctl audit signing-key --out control-plane.pub
  argusctl audit verify-transcript session.transcript.json --key control-plane.pub`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := c.Do(cmd.Context(), "GET", "/v1/sessions/"+url.PathEscape(args[0])+"/transcript", nil, &raw); err != nil {
				return err
			}
			var sum transcriptSummary
			if err := json.Unmarshal(raw, &sum); err != nil {
				return fmt.Errorf("the server's transcript is not readable: %w", err)
			}
			var b bytes.Buffer
			if err := json.Indent(&b, raw, "", "  "); err != nil {
				return err
			}
			b.WriteByte('\n')
			var w io.Writer = f.IOStreams.Out
			if out != "" && out != "-" {
				file, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
				if err != nil {
					return err
				}
				defer file.Close()
				w = file
			}
			if _, err := w.Write(b.Bytes()); err != nil {
				return err
			}
			if out != "" && out != "-" {
				fmt.Fprintf(f.IOStreams.ErrOut, "session %s: %d actions in seq %d..%d (%d entries), signed by key %s, written to %s\n",
					sum.Session.ID, sum.Actions, sum.FirstSeq, sum.LastSeq, len(sum.Entries), sum.Signature.KeyID, out)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "write to this file (default stdout)")
	return cmd
}
