// Package auditcmd is `argusctl audit`: list the audit trail and verify it
// (scope audit:read), and check a session transcript offline.
package auditcmd

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/argus-remote/argus/argusctl/cmdutil"
)

// entry is one audit entry as the API lists it, its detail included: a
// denial's failed factors, a refusal's code, a command's summary.
type entry struct {
	ID         string         `json:"id"`
	OccurredAt time.Time      `json:"occurred_at"`
	Actor      string         `json:"actor"`
	Action     string         `json:"action"`
	Outcome    string         `json:"outcome"`
	TenantID   string         `json:"tenant_id,omitempty"`
	AgentID    string         `json:"agent_id,omitempty"`
	SessionID  string         `json:"session_id,omitempty"`
	ClientIP   string         `json:"client_ip,omitempty"`
	Reason     string         `json:"reason,omitempty"`
	Detail     map[string]any `json:"detail,omitempty"`
}

// leading are the detail keys that say most about an entry; the short
// form shows them first.
var leading = []string{"failed_factors", "code", "command", "status", "end_reason", "patch_id"}

// maxShort bounds the short form of an entry's detail in the table.
const maxShort = 80

// shortDetail is a one-line form of an entry's detail for the table:
// key=value pairs, the telling keys first, empty values left out.
func shortDetail(d map[string]any) string {
	keys := make([]string, 0, len(d))
	for k := range d {
		if !slices.Contains(leading, k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range append(slices.Clone(leading), keys...) {
		v, ok := d[k]
		if !ok {
			continue
		}
		if s := shortValue(v); s != "" {
			parts = append(parts, k+"="+s)
		}
	}
	out := strings.Join(parts, " ")
	if r := []rune(out); len(r) > maxShort {
		out = string(r[:maxShort-1]) + "…"
	}
	return out
}

func shortValue(v any) string {
	var s string
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		s = v
	case []any:
		items := make([]string, 0, len(v))
		for _, it := range v {
			if x := shortValue(it); x != "" {
				items = append(items, x)
			}
		}
		s = strings.Join(items, ",")
	case map[string]any:
		b, _ := json.Marshal(v)
		s = string(b)
	default:
		s = fmt.Sprint(v)
	}
	// One line per entry, whatever the detail holds.
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == ' ' {
			return '_'
		}
		return r
	}, s)
}

type report struct {
	From       time.Time `json:"from"`
	To         time.Time `json:"to"`
	AuditRows  int       `json:"audit_rows"`
	Events     int       `json:"events"`
	Clean      bool      `json:"clean"`
	Mismatches []struct {
		Kind   string `json:"kind"`
		ID     string `json:"id,omitempty"`
		Seq    int64  `json:"seq,omitempty"`
		Detail string `json:"detail"`
	} `json:"mismatches"`
	Head    *head `json:"head,omitempty"`
	Extends *struct {
		head
		Run        int64     `json:"run"`
		Kind       string    `json:"kind"`
		RecordedAt time.Time `json:"recorded_at"`
	} `json:"extends,omitempty"`
}

// head is a point of the events chain, as a run reached it.
type head struct {
	Seq  int64     `json:"seq"`
	Hash string    `json:"hash"`
	At   time.Time `json:"at"`
}

// NewCmdAudit builds `argusctl audit`.
func NewCmdAudit(f *cmdutil.Factory) *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "List and verify the audit trail (scope audit:read)"}
	var tenant, session string
	var since time.Duration
	var limit int
	list := &cobra.Command{
		Use:   "list",
		Short: "List audit entries, newest first",
		Long: `List audit entries, newest first. The table shows a short form of each
entry's detail (a denial's failed factors, a refusal's code, a command's
summary); -o json shows all of it.`,
		Example: `  argusctl audit list --tenant acme --since 72h
  argusctl audit list --session 5f0c... -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			q := url.Values{"since": {since.String()}, "limit": {fmt.Sprint(limit)}}
			if tenant != "" {
				q.Set("tenant", tenant)
			}
			if session != "" {
				q.Set("session", session)
			}
			var res struct {
				Entries []entry `json:"entries"`
			}
			if err := c.Do(cmd.Context(), "GET", "/v1/audit?"+q.Encode(), nil, &res); err != nil {
				return err
			}
			if f.Output() == "json" {
				return cmdutil.PrintJSON(f.IOStreams, res)
			}
			t := cmdutil.NewTable(f.IOStreams, "TIME", "ACTOR", "ACTION", "OUTCOME", "SESSION", "REASON", "DETAIL")
			for _, e := range res.Entries {
				t.Row(e.OccurredAt.UTC().Format(time.RFC3339), e.Actor, e.Action, e.Outcome, e.SessionID, e.Reason, shortDetail(e.Detail))
			}
			return t.Flush()
		},
	}
	list.Flags().StringVar(&tenant, "tenant", "", "only this tenant (name or id)")
	list.Flags().StringVar(&session, "session", "", "only this session")
	list.Flags().DurationVar(&since, "since", 24*time.Hour, "how far back")
	list.Flags().IntVar(&limit, "limit", 200, "at most this many entries")

	var vsince time.Duration
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Reconcile audit_log with events and verify the hash chain; exit 1 on mismatch",
		Long: `Reconcile audit_log with events over a window and verify the hash chain,
from the head the previous run recorded to the newest event of the window.
The run is audited and records the chain head it reached; the output shows
it (seq and hash): keep a copy elsewhere, and a later run shows whether the
chain still reaches it. Exit 1 on mismatch.`,
		Example: `  argusctl audit verify --since 168h`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.APIClient()
			if err != nil {
				return err
			}
			var r report
			if err := c.Do(cmd.Context(), "POST", "/v1/audit/verify", map[string]string{"since": vsince.String()}, &r); err != nil {
				return err
			}
			if f.Output() == "json" {
				_ = cmdutil.PrintJSON(f.IOStreams, r)
			} else {
				out := f.IOStreams.Out
				fmt.Fprintf(out, "window %s .. %s: %d audit_log rows, %d events, %d mismatches\n",
					r.From.Format(time.RFC3339), r.To.Format(time.RFC3339), r.AuditRows, r.Events, len(r.Mismatches))
				// Keep this line elsewhere: a later run shows whether the
				// chain still reaches it.
				if r.Head != nil {
					fmt.Fprintf(out, "chain head: seq %d hash %s (event at %s)\n", r.Head.Seq, r.Head.Hash, r.Head.At.UTC().Format(time.RFC3339Nano))
				} else {
					fmt.Fprintln(out, "chain head: none")
				}
				if e := r.Extends; e != nil {
					fmt.Fprintf(out, "verified from seq %d, the head run %d (%s, %s) recorded\n", e.Seq, e.Run, e.Kind, e.RecordedAt.UTC().Format(time.RFC3339))
				}
				for _, m := range r.Mismatches {
					fmt.Fprintf(out, "- %s id=%s seq=%d: %s\n", m.Kind, m.ID, m.Seq, m.Detail)
				}
				if r.Clean && r.AuditRows == 0 && r.Events == 0 {
					fmt.Fprintln(out, "no audited actions in this window: neither trail holds a row in it, so nothing was compared")
				}
			}
			if !r.Clean {
				return errors.New("the audit trails do not reconcile")
			}
			return nil
		},
	}
	verify.Flags().DurationVar(&vsince, "since", 24*time.Hour, "window: this long until now")
	cmd.AddCommand(list, verify, newCmdVerifyTranscript(f), newCmdSigningKey(f))
	return cmd
}
