package topics

import (
	"crypto/ed25519"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const agent = "0b6c1f1e-8f0a-4c2e-9d55-3f8f2f6b9a10"

func TestParseAgentID_RefusesAnythingButCanonicalUUIDs(t *testing.T) {
	for _, s := range []string{
		"", "+", "#", "a/b", "0B6C1F1E-8F0A-4C2E-9D55-3F8F2F6B9A10", "{" + agent + "}",
		agent + "\x00", "0b6c1f1e8f0a4c2e9d553f8f2f6b9a10", agent[:35] + "+", agent[:35] + "#",
	} {
		_, err := ParseAgentID(s)
		assert.ErrorIs(t, err, ErrInvalidID, "%q", s)
	}
	id, err := ParseAgentID(agent)
	require.NoError(t, err)
	assert.Equal(t, "argus/v1/agents/"+agent+"/commands", id.Topic(Commands))
	assert.Equal(t, "argus/v1/status/agents/"+agent, id.Status())
}

func TestZeroIDBuildsNoTopic(t *testing.T) {
	assert.Panics(t, func() { _ = AgentID{}.Topic(Commands) })
}

func TestParseAgentTopic_RoundTripsAndRefusesOthers(t *testing.T) {
	id, _ := ParseAgentID(agent)
	for _, k := range agentKinds {
		got, kind, ok := ParseAgentTopic(id.Topic(k))
		require.True(t, ok, k)
		assert.Equal(t, id, got)
		assert.Equal(t, k, kind)
	}
	for _, topic := range []string{
		"argus/v1/agents/+/commands",
		"argus/v1/agents/" + agent + "/#",
		"argus/v1/agents/" + agent + "/commands/x",
		"argus/v1/agents/" + agent + "/",
		"$share/g/argus/v1/agents/" + agent + "/commands",
		"argus/v1/agents/" + agent,
		"argus/v2/agents/" + agent + "/commands",
		"",
	} {
		_, _, ok := ParseAgentTopic(topic)
		assert.False(t, ok, topic)
	}
}

func TestSignOpen(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	msg := ActivationMsg{V: Version, AgentID: agent, State: StateActive, IssuedAt: time.Now().UTC()}
	data, err := Sign(priv, PurposeActivation, msg)
	require.NoError(t, err)

	var got ActivationMsg
	require.NoError(t, Open(pub, PurposeActivation, data, MaxEnvelope, &got))
	assert.Equal(t, msg.State, got.State)

	assert.ErrorIs(t, Open(pub, PurposeCommand, data, MaxEnvelope, &got), ErrBadSignature, "a signature is bound to its purpose")
	otherPub, _, _ := ed25519.GenerateKey(nil)
	assert.ErrorIs(t, Open(otherPub, PurposeActivation, data, MaxEnvelope, &got), ErrBadSignature)
	assert.ErrorIs(t, Open(pub, PurposeActivation, data, 10, &got), ErrTooLarge)
	assert.ErrorIs(t, Open(pub, PurposeActivation, []byte("{nope"), MaxEnvelope, &got), ErrMalformed)

	tampered := []byte(string(data))
	// Flip one byte inside the base64 payload.
	i := len(`{"v":1,"payload":"`) + 5
	tampered[i] ^= 1
	assert.Error(t, Open(pub, PurposeActivation, tampered, MaxEnvelope, &got))
}
