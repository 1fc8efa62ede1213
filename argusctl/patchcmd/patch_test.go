package patchcmd_test

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/root"
	"github.com/argus-remote/argus/patch"
)

func TestVerify_WrongKeyIsAboutTheKeyFileNotAnAgent(t *testing.T) {
	t.Setenv("ARGUSCTL_CONFIG", "")
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	dir := t.TempDir()
	_, signer, _ := ed25519.GenerateKey(nil)
	other, _, _ := ed25519.GenerateKey(nil)
	bundle, err := patch.Build(patch.Manifest{ID: "HF-1", Version: "1.0.0", Root: "streamer",
		Files: []patch.File{{Target: "bin/run.sh", Mode: "0755"}}}, map[string][]byte{"bin/run.sh": []byte("v2\n")}, signer)
	require.NoError(t, err)
	bundleFile, pubFile := filepath.Join(dir, "hf-1.bundle"), filepath.Join(dir, "other.pub")
	require.NoError(t, os.WriteFile(bundleFile, bundle, 0o600))
	require.NoError(t, os.WriteFile(pubFile, []byte(patch.EncodePublic(other)+"\n"), 0o600))

	io, _, _, _ := iostreams.Test()
	cmd, _ := root.NewCmdRoot(io)
	cmd.SetArgs([]string{"patch", "verify", "--pub", pubFile, bundleFile})
	err = cmd.Execute()
	require.Error(t, err)
	msg := err.Error()
	assert.NotContains(t, msg, "agent", "no agent is involved offline")
	assert.Contains(t, msg, "unknown_signer")
	assert.Contains(t, msg, "signed by key "+patch.KeyID(signer.Public().(ed25519.PublicKey)))
	assert.Contains(t, msg, "not by the key in "+pubFile+" (key "+patch.KeyID(other)+")")
}
