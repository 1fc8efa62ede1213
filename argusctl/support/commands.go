package support

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/argusctl/cmdutil"
)

// ok turns a refused or failed result into an error with its code.
func ok(name string, res apiclient.CommandResult) error {
	if res.Status == "ok" {
		return nil
	}
	if res.Error != nil {
		return fmt.Errorf("%s: %s (%s)", name, res.Error.Message, res.Error.Code)
	}
	return fmt.Errorf("%s: %s", name, res.Status)
}

// The agent's bounds for tail_log (agent.maxTailLines, defTailLines).
const (
	maxTailLines     = 5000
	defaultTailLines = 200
)

func newCmdTailLog(f *cmdutil.Factory) *cobra.Command {
	var session, log string
	var lines int
	cmd := &cobra.Command{
		Use:     "tail-log",
		Short:   "Show the last lines of a log the agent's configuration names",
		Example: `  argusctl support tail-log --session 5f0c... --log streamer --lines 500`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			a := map[string]any{}
			if log != "" {
				a["log"] = log
			}
			if cmd.Flags().Changed("lines") {
				if lines < 1 || lines > maxTailLines {
					return fmt.Errorf("--lines %d: give 1..%d lines (leave --lines out for %d)", lines, maxTailLines, defaultTailLines)
				}
				a["lines"] = lines
			}
			res, err := Run(cmd.Context(), f, session, "tail_log", a)
			if err != nil {
				return err
			}
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, res)
			}
			if err := ok("tail_log", res); err != nil {
				return err
			}
			var out struct {
				Lines []string `json:"lines"`
			}
			if err := json.Unmarshal(res.Data, &out); err != nil {
				return err
			}
			for _, l := range out.Lines {
				fmt.Fprintln(f.IOStreams.Out, l)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&session, "session", "", "session id (required)")
	cmd.Flags().StringVar(&log, "log", "", "log name from the agent's configuration (default: its only log)")
	cmd.Flags().IntVar(&lines, "lines", 0, "how many lines, 1..5000 (when left out, the agent's default 200)")
	_ = cmd.MarkFlagRequired("session")
	return cmd
}

// writeContent writes decoded content to path ("" or "-" is stdout) after
// checking it against its digest.
func writeContent(f *cmdutil.Factory, path, b64, digest string) (int, error) {
	data, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return 0, fmt.Errorf("content: %w", err)
	}
	if digest != "" {
		sum := sha256.Sum256(data)
		if hex.EncodeToString(sum[:]) != digest {
			return 0, fmt.Errorf("content does not match its sha256")
		}
	}
	var w io.Writer = f.IOStreams.Out
	if path != "" && path != "-" {
		file, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return 0, err
		}
		defer file.Close()
		w = file
	}
	return w.Write(data)
}

func newCmdReadFile(f *cmdutil.Factory) *cobra.Command {
	var session, out string
	cmd := &cobra.Command{
		Use:     "read-file PATH",
		Short:   "Read a file under one of the agent's readable roots",
		Example: `  argusctl support read-file --session 5f0c... /etc/argus/streamer.yaml --out streamer.yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := Run(cmd.Context(), f, session, "read_file", map[string]string{"path": args[0]})
			if err != nil {
				return err
			}
			if err := ok("read_file", res); err != nil {
				return err
			}
			var file struct {
				Path          string `json:"path"`
				Size          int64  `json:"size"`
				SHA256        string `json:"sha256"`
				ContentBase64 string `json:"content_base64"`
			}
			if err := json.Unmarshal(res.Data, &file); err != nil {
				return err
			}
			if _, err := writeContent(f, out, file.ContentBase64, file.SHA256); err != nil {
				return err
			}
			if out != "" && out != "-" {
				fmt.Fprintf(f.IOStreams.ErrOut, "%s: %d bytes, sha256 %s, written to %s\n", file.Path, file.Size, file.SHA256, out)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&session, "session", "", "session id (required)")
	cmd.Flags().StringVar(&out, "out", "", "write to this file (default stdout)")
	_ = cmd.MarkFlagRequired("session")
	return cmd
}

func newCmdCapabilities(f *cmdutil.Factory) *cobra.Command {
	var session string
	cmd := &cobra.Command{
		Use:     "capabilities",
		Short:   "Refresh the agent's capability data (stored as advisory; see 'argusctl agent show')",
		Example: `  argusctl support capabilities --session 5f0c...`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := Run(cmd.Context(), f, session, "get_capabilities", nil)
			if err != nil {
				return err
			}
			if err := ok("get_capabilities", res); err != nil {
				return err
			}
			var v any
			if err := json.Unmarshal(res.Data, &v); err != nil {
				return err
			}
			return cmdutil.PrintJSON(f.IOStreams, v)
		},
	}
	cmd.Flags().StringVar(&session, "session", "", "session id (required)")
	_ = cmd.MarkFlagRequired("session")
	return cmd
}

func newCmdCamera(f *cmdutil.Factory) *cobra.Command {
	var session, camera, out string
	cmd := &cobra.Command{
		Use:     "camera",
		Short:   "Grab one still frame (JPEG) from a camera the agent's configuration names",
		Example: `  argusctl support camera --session 5f0c... --camera lobby --out frame.jpg`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := Run(cmd.Context(), f, session, "camera_view", map[string]string{"camera": camera})
			if err != nil {
				return err
			}
			if err := ok("camera_view", res); err != nil {
				return err
			}
			var frame struct {
				Width      int    `json:"width"`
				Height     int    `json:"height"`
				CapturedAt string `json:"captured_at"`
				SHA256     string `json:"sha256"`
				JPEGBase64 string `json:"jpeg_base64"`
			}
			if err := json.Unmarshal(res.Data, &frame); err != nil {
				return err
			}
			n, err := writeContent(f, out, frame.JPEGBase64, frame.SHA256)
			if err != nil {
				return err
			}
			fmt.Fprintf(f.IOStreams.ErrOut, "%s: %dx%d JPEG, %d bytes, captured %s\n", strings.TrimSpace(out), frame.Width, frame.Height, n, frame.CapturedAt)
			return nil
		},
	}
	cmd.Flags().StringVar(&session, "session", "", "session id (required)")
	cmd.Flags().StringVar(&camera, "camera", "", "camera name from the agent's configuration (required)")
	cmd.Flags().StringVar(&out, "out", "", "write the JPEG here (required)")
	for _, n := range []string{"session", "camera", "out"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}

func newCmdPatch(f *cmdutil.Factory) *cobra.Command {
	var session string
	cmd := &cobra.Command{
		Use:   "patch BUNDLE",
		Short: "Send a signed hotfix bundle to the session's agent",
		Long: `Send a bundle built with 'argusctl patch build'. The agent checks it against
the patch-signing keys in its own configuration, refuses replays and
downgrades, and rolls back every file if anything fails.`,
		Example: `  argusctl support patch --session 5f0c... hf-007.bundle`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.GatedAPIClient()
			if err != nil {
				return err
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			token, err := loadToken(session)
			if err != nil {
				return err
			}
			c.SessionToken = token
			var res struct {
				PatchID string               `json:"patch_id"`
				Version string               `json:"version"`
				Status  string               `json:"status"`
				Error   *apiclient.ErrorBody `json:"error"`
				Data    json.RawMessage      `json:"data"`
			}
			if err := c.DoRaw(cmd.Context(), "POST", "/v1/support/sessions/"+session+"/patch", "application/octet-stream", data, &res); err != nil {
				forgetIfEnded(session, err)
				return err
			}
			if f.Output() == "json" {
				_ = cmdutil.PrintJSON(f.IOStreams, res)
			}
			if res.Status != "ok" {
				if res.Error != nil {
					return fmt.Errorf("patch %s: %s (%s)", res.PatchID, res.Error.Message, res.Error.Code)
				}
				return fmt.Errorf("patch %s: %s", res.PatchID, res.Status)
			}
			if f.Output() != "json" {
				fmt.Fprintf(f.IOStreams.Out, "applied patch %s version %s\n", res.PatchID, res.Version)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&session, "session", "", "session id (required)")
	_ = cmd.MarkFlagRequired("session")
	return cmd
}
