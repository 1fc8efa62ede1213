package agent

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/argus-remote/argus/topics"
)

func TestEncodeResult_OverTheCapIsRefusedWithItsSize(t *testing.T) {
	data, _ := json.Marshal(map[string]string{"blob": strings.Repeat("x", 4096)})
	res := topics.ResultMsg{V: topics.Version, CommandID: "c1", Status: topics.ResultOK, Data: data}

	b, err := encodeResult(res, 1<<20)
	require.NoError(t, err)
	var got topics.ResultMsg
	require.NoError(t, json.Unmarshal(b, &got))
	assert.Equal(t, topics.ResultOK, got.Status, "under the cap it goes as is")

	b, err = encodeResult(res, 1024)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &got))
	assert.Equal(t, topics.ResultError, got.Status)
	require.NotNil(t, got.Error)
	assert.Equal(t, "result_too_large", got.Error.Code)
	assert.Contains(t, got.Error.Message, "limit is 1024")
	assert.Equal(t, "c1", got.CommandID, "still answers its command")
	assert.LessOrEqual(t, len(b), 1024)
}
