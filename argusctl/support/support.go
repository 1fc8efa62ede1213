// Package support is `argusctl support`: open a session behind the
// 3-factor gate, run commands in it, list, show and end sessions.
//
// A session's token is kept in a 0600 file under the config directory
// (sessions/<id>.token), so the operator never types it. It is removed
// once argusctl learns the session has ended: deactivated, a command
// answered session_ended or session_expired, or show or list saw it ended.
package support

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/argusctl/cmdutil"
	"github.com/argus-remote/argus/argusctl/config"
)

// NewCmdSupport builds `argusctl support`.
func NewCmdSupport(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "support",
		Short: "Remote-support sessions (scope remote_support, behind the 3-factor gate)",
	}
	cmd.AddCommand(newCmdActivate(f), newCmdList(f), newCmdShow(f), newCmdDeactivate(f),
		newCmdRun(f, "ping", "ping", "Check the agent answers within the session"),
		newCmdRun(f, "info", "agent_info", "Show the agent's version, host and state"),
		newCmdTailLog(f), newCmdReadFile(f), newCmdCapabilities(f), newCmdCamera(f), newCmdPatch(f), newCmdTranscript(f))
	return cmd
}

// tokenPath is where a session's token is kept.
func tokenPath(sessionID string) string {
	return filepath.Join(config.Dir(), "sessions", sessionID+".token")
}

func saveToken(sessionID, token string) (string, error) {
	p := tokenPath(sessionID)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", err
	}
	return p, os.WriteFile(p, []byte(token+"\n"), 0o600)
}

func loadToken(sessionID string) (string, error) {
	b, err := os.ReadFile(tokenPath(sessionID))
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("no token kept for session %s on this machine (it is shown once, to whoever activated it)", sessionID)
	}
	return strings.TrimSpace(string(b)), err
}

// forgetToken removes a session's kept token, if any. id comes from the
// user or the server; one that is not a plain file name is left alone.
func forgetToken(id string) {
	if id == "" || id != filepath.Base(id) || id == "." || id == ".." {
		return
	}
	_ = os.Remove(tokenPath(id))
}

// forgetIfEnded removes the session's kept token when err says the
// session is over: the token can open nothing any more.
func forgetIfEnded(id string, err error) {
	if apiclient.IsCode(err, "session_ended") || apiclient.IsCode(err, "session_expired") {
		forgetToken(id)
	}
}

// forgetEnded removes the kept tokens of sessions seen ended.
func forgetEnded(sessions ...apiclient.Session) {
	for _, s := range sessions {
		// A session still waiting for its tenant (or opening) keeps its token.
		if !s.Active && s.State != "pending_approval" && s.State != "approved" {
			forgetToken(s.ID)
		}
	}
}

// defaultTTL is the session length the server chooses when none is asked
// for (sessions.DefaultTTL), as people write it.
const defaultTTL = "30m"

func newCmdActivate(f *cmdutil.Factory) *cobra.Command {
	var tenant, agent, reason string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "activate",
		Short: "Open a time-boxed session on one online agent",
		Long: `Open a support session on one enrolled, online agent of a consenting, armed
tenant. Needs the 3-factor gate: your address inside the operator networks,
the ops token (--ops-token / ARGUSCTL_OPS_TOKEN) and a token with the
remote_support scope. The session token is kept for you, 0600.

When the tenant requires approval ('argusctl tenant approval set'), the
command shows that it waits, with the time elapsed, and returns once the
tenant has decided: the session opens (its TTL counted from the approval),
or it fails with tenant_denied or tenant_approval_timeout. Interrupting it
withdraws the activation.`,
		Example: `  argusctl support activate --tenant acme --agent 0b6c1f1e-... --reason "INC-2231" --ttl 30m`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ttlGiven := cmd.Flags().Changed("ttl")
			if ttlGiven && ttl <= 0 {
				return fmt.Errorf("--ttl %v: the session length must be positive (like 30m); leave --ttl out for the default %s", ttl, defaultTTL)
			}
			c, err := f.GatedAPIClient()
			if err != nil {
				return err
			}
			body := map[string]string{"tenant": tenant, "agent": agent, "reason": reason}
			if ttlGiven {
				body["ttl"] = ttl.String()
			}
			var res struct {
				Session  apiclient.Session `json:"session"`
				Token    string            `json:"token"`
				Approval *approval         `json:"approval"`
			}
			if err := c.Do(cmd.Context(), "POST", "/v1/support/sessions", body, &res); err != nil {
				return err
			}
			path, err := saveToken(res.Session.ID, res.Token)
			if err != nil {
				return fmt.Errorf("session %s is requested but its token could not be kept: %w", res.Session.ID, err)
			}
			if res.Approval != nil {
				// The tenant decides first; the token opens nothing before.
				if res.Session, err = awaitApproval(cmd.Context(), f, c, *res.Approval, tenant); err != nil {
					return err
				}
			}
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, res.Session)
			}
			fmt.Fprintf(f.IOStreams.Out, "session %s active on agent %s (%s) until %s\n", res.Session.ID, res.Session.AgentName,
				res.Session.Tenant, res.Session.ExpiresAt.UTC().Format(time.RFC3339))
			fmt.Fprintf(f.IOStreams.ErrOut, "session token kept in %s\n", path)
			if !ttlGiven {
				fmt.Fprintf(f.IOStreams.ErrOut, "no --ttl given: the session lasts the server's default %s\n", defaultTTL)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "tenant name or id (required)")
	cmd.Flags().StringVar(&agent, "agent", "", "agent id (required)")
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; audited; the tenant sees it)")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, "session length, positive (when left out, the server's default 30m; at most 120m)")
	for _, n := range []string{"tenant", "agent", "reason"} {
		_ = cmd.MarkFlagRequired(n)
	}
	return cmd
}

func newCmdList(f *cmdutil.Factory) *cobra.Command {
	var active bool
	cmd := &cobra.Command{
		Use:     "list",
		Short:   "List sessions, newest first",
		Example: `  argusctl support list --active`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			q := url.Values{}
			if active {
				q.Set("active", "true")
			}
			var res struct {
				Sessions []apiclient.Session `json:"sessions"`
			}
			if err := c.Do(cmd.Context(), "GET", "/v1/support/sessions?"+q.Encode(), nil, &res); err != nil {
				return err
			}
			forgetEnded(res.Sessions...)
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, res)
			}
			t := cmdutil.NewTable(f.IOStreams, "ID", "TENANT", "AGENT", "OPERATOR", "CREATED", "EXPIRES", "ENDED", "WHY")
			for _, s := range res.Sessions {
				t.Row(s.ID, s.Tenant, s.AgentName, s.Operator, cmdutil.Time(&s.CreatedAt), cmdutil.Time(&s.ExpiresAt), cmdutil.Time(s.EndedAt), s.EndReason)
			}
			return t.Flush()
		},
	}
	cmd.Flags().BoolVar(&active, "active", false, "only live sessions")
	return cmd
}

func getSession(ctx context.Context, f *cmdutil.Factory, id string) (apiclient.Session, error) {
	c, err := f.APIClient()
	if err != nil {
		return apiclient.Session{}, err
	}
	var s apiclient.Session
	err = c.Do(ctx, "GET", "/v1/support/sessions/"+url.PathEscape(id), nil, &s)
	return s, err
}

func printSession(f *cmdutil.Factory, s apiclient.Session) error {
	if f.Output() == "json" {
		return cmdutil.PrintJSON(f.IOStreams, s)
	}
	state := "ended (" + s.EndReason + ")"
	switch {
	case s.Active:
		state = "ACTIVE"
	case s.State != "":
		state = s.State + " (no session opened)"
		if s.State == "pending_approval" {
			state = "pending_approval (waiting for the tenant since " + cmdutil.Time(&s.CreatedAt) + ")"
		}
	}
	_, err := fmt.Fprintf(f.IOStreams.Out, "session:  %s\nstate:    %s\ntenant:   %s\nagent:    %s (%s)\noperator: %s\nreason:   %s\ncreated:  %s\nexpires:  %s\nended:    %s\n",
		s.ID, state, s.Tenant, s.AgentName, s.AgentID, s.Operator, s.Reason,
		cmdutil.Time(&s.CreatedAt), cmdutil.Time(&s.ExpiresAt), cmdutil.Time(s.EndedAt))
	return err
}

func newCmdShow(f *cmdutil.Factory) *cobra.Command {
	return &cobra.Command{
		Use:     "show SESSION",
		Short:   "Show one session",
		Example: `  argusctl support show 5f0c...`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := getSession(cmd.Context(), f, args[0])
			if err != nil {
				return err
			}
			forgetEnded(s)
			return printSession(f, s)
		},
	}
}

func newCmdDeactivate(f *cmdutil.Factory) *cobra.Command {
	return &cobra.Command{
		Use:     "deactivate SESSION",
		Short:   "End a session now; the agent goes dormant",
		Example: `  argusctl support deactivate 5f0c...`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			var s apiclient.Session
			if err := c.Do(cmd.Context(), "POST", "/v1/support/sessions/"+url.PathEscape(args[0])+"/deactivate", nil, &s); err != nil {
				forgetIfEnded(args[0], err)
				return err
			}
			forgetToken(s.ID)
			forgetToken(args[0])
			return printSession(f, s)
		},
	}
}

// Run sends one command in a session with the kept token.
func Run(ctx context.Context, f *cmdutil.Factory, sessionID, name string, args any) (apiclient.CommandResult, error) {
	c, err := f.GatedAPIClient()
	if err != nil {
		return apiclient.CommandResult{}, err
	}
	token, err := loadToken(sessionID)
	if err != nil {
		return apiclient.CommandResult{}, err
	}
	c.SessionToken = token
	body := map[string]any{"name": name}
	if args != nil {
		body["args"] = args
	}
	var res apiclient.CommandResult
	err = c.Do(ctx, "POST", "/v1/support/sessions/"+url.PathEscape(sessionID)+"/commands", body, &res)
	forgetIfEnded(sessionID, err)
	if res.Warning != "" {
		fmt.Fprintln(f.IOStreams.ErrOut, "warning: "+res.Warning)
	}
	return res, err
}

func newCmdRun(f *cmdutil.Factory, use, name, short string) *cobra.Command {
	var sessionID string
	cmd := &cobra.Command{
		Use:     use,
		Short:   short,
		Example: fmt.Sprintf("  argusctl support %s --session 5f0c...", use),
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := Run(cmd.Context(), f, sessionID, name, nil)
			if err != nil {
				return err
			}
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, res)
			}
			if res.Status != "ok" {
				msg := res.Status
				if res.Error != nil {
					msg = res.Error.Message + " (" + res.Error.Code + ")"
				}
				return fmt.Errorf("%s: %s", name, msg)
			}
			var pretty map[string]any
			if json.Unmarshal(res.Data, &pretty) == nil {
				t := cmdutil.NewTable(f.IOStreams, "FIELD", "VALUE")
				for _, k := range slices.Sorted(maps.Keys(pretty)) {
					t.Row(k, fmt.Sprint(pretty[k]))
				}
				t.Row("round trip", res.Duration)
				return t.Flush()
			}
			_, err = fmt.Fprintln(f.IOStreams.Out, string(res.Data))
			return err
		},
	}
	cmd.Flags().StringVar(&sessionID, "session", "", "session id (required)")
	_ = cmd.MarkFlagRequired("session")
	return cmd
}
