package whoami_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/root"
	"github.com/argus-remote/argus/argusctl/whoami"
)

func TestWhoami_PrintsOperatorAndScopes(t *testing.T) {
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		assert.Equal(t, "/v1/whoami", r.URL.Path)
		assert.Equal(t, "Bearer tok", r.Header.Get("Authorization"))
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"operator_id":"6f1c","operator":"alice","token_id":"abc","scopes":["remote_support","monitor"]}`))
	}))
	defer api.Close()

	io, _, out, _ := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs([]string{"whoami", "--server", api.URL, "--token", "tok"})
	require.NoError(t, cmd.Execute())
	assert.Contains(t, out.String(), "alice")
	assert.Contains(t, out.String(), "remote_support,monitor")
	assert.Contains(t, out.String(), "never")
}

func TestWhoami_APIErrorCodeIsShown(t *testing.T) {
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(401)
		_, _ = w.Write([]byte(`{"error":{"code":"token_expired","message":"operator token has expired"}}`))
	}))
	defer api.Close()

	io, _, _, _ := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs([]string{"whoami", "--server", api.URL, "--token", "tok"})
	err := cmd.Execute()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "token_expired")
}

func TestWhoami_NeedsAToken(t *testing.T) {
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("ARGUSCTL_TOKEN", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	io, _, _, _ := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs([]string{"whoami"})
	err := cmd.Execute()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ARGUSCTL_TOKEN")
}

func TestWhoami_FlagsReachRun(t *testing.T) {
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	io, _, _, _ := iostreams.Test()
	cmd, f := root.NewCmdRoot(io)
	var got string
	// Swap whoami for one whose run step records what it would use.
	for _, c := range cmd.Commands() {
		if c.Name() == "whoami" {
			cmd.RemoveCommand(c)
		}
	}
	cmd.AddCommand(whoami.NewCmdWhoami(f, func(ctx context.Context, o *whoami.Options) error {
		c, err := o.Factory.APIClient()
		got = c.BaseURL + " " + o.Factory.Output()
		return err
	}))
	cmd.SetArgs([]string{"whoami", "--server", "http://x.example", "-o", "json"})
	require.NoError(t, cmd.Execute())
	assert.Equal(t, "http://x.example json", got)
}
