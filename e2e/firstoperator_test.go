package e2e

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/argus-remote/argus/internal/testenv"
)

// readmeFirstOperator is the command the README's "First operator"
// section gives (there through `go run ./cmd/argus-server`).
const readmeFirstOperator = "  argus-server operator create --name admin --scope operator:admin --scope tenant:admin --scope agent:admin\n"

// The start-up hint to create a first operator is printed while there is
// none, with the README's command, and not once an operator exists.
func TestServe_FirstOperatorHintOnlyWithoutOperators(t *testing.T) {
	env := testenv.NewEnv(t)

	srv := env.StartServer(t, nil)
	srv.Stop(t) // all it wrote is in Logs once it has exited
	assert.Contains(t, srv.Logs(), "Create a first operator")
	assert.Contains(t, srv.Logs(), "\n"+readmeFirstOperator, "the README's command, on a line of its own")

	env.Operator(t, "admin", "operator:admin")
	srv = env.StartServer(t, nil)
	srv.Stop(t)
	assert.NotContains(t, srv.Logs(), "Create a first operator")
	assert.NotContains(t, srv.Logs(), "operator create")
}
