// Package cmdutil holds what every argusctl command is built from: the IO
// streams, the resolved configuration and an API client, plus output
// helpers shared by all commands.
package cmdutil

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/argus-remote/argus/argusctl/apiclient"
	"github.com/argus-remote/argus/argusctl/config"
	"github.com/argus-remote/argus/argusctl/iostreams"
)

// Factory gives commands their dependencies; tests build one with
// test streams and a test server.
type Factory struct {
	IOStreams *iostreams.IOStreams
	Config    func() (*config.Config, error)
	// HTTPClient is used for API calls; nil means a default client.
	HTTPClient *http.Client
}

// APIClient returns a client for the configured server.
func (f *Factory) APIClient() (*apiclient.Client, error) {
	cfg, err := f.Config()
	if err != nil {
		return nil, err
	}
	hc := f.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 2 * time.Minute}
	}
	return &apiclient.Client{BaseURL: cfg.Server, Token: cfg.Token, OpsToken: cfg.OpsToken, HTTP: hc}, nil
}

// ErrNoOpsToken is what a gated command says, before calling, when no ops
// token is configured: the server's refusal does not say which of the
// gate's factors failed, but argusctl knows this one locally.
var ErrNoOpsToken = errors.New("no ops token: set ARGUSCTL_OPS_TOKEN or --ops-token (or ops-token: in a profile)")

// GatedAPIClient returns a client for a call through the 3-factor gate
// (activating a session, its commands and patches); it refuses at once
// when no ops token is configured.
func (f *Factory) GatedAPIClient() (*apiclient.Client, error) {
	c, err := f.APIClient()
	if err != nil {
		return nil, err
	}
	if c.OpsToken == "" {
		return nil, ErrNoOpsToken
	}
	return c, nil
}

// Output returns the configured output format: "table" or "json".
func (f *Factory) Output() string {
	cfg, err := f.Config()
	if err != nil {
		return "table"
	}
	return cfg.Output
}

// PrintJSON writes v as indented JSON.
func PrintJSON(io *iostreams.IOStreams, v any) error {
	enc := json.NewEncoder(io.Out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Table writes aligned columns for people.
type Table struct {
	tw *tabwriter.Writer
}

// NewTable starts a table with the given header.
func NewTable(io *iostreams.IOStreams, header ...string) *Table {
	t := &Table{tw: tabwriter.NewWriter(io.Out, 0, 4, 2, ' ', 0)}
	t.Row(header...)
	return t
}

// Row adds one row.
func (t *Table) Row(cells ...string) {
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

// Flush writes the table out.
func (t *Table) Flush() error { return t.tw.Flush() }
