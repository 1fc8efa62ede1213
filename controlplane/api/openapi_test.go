package api_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

// TestOpenAPI_DocumentsEveryRoute keeps openapi.yaml honest: every route
// the API registers is in it, with its method.
func TestOpenAPI_DocumentsEveryRoute(t *testing.T) {
	src, err := os.ReadFile("api.go")
	require.NoError(t, err)
	doc, err := os.ReadFile("openapi.yaml")
	require.NoError(t, err)
	var spec struct {
		Paths map[string]map[string]any `yaml:"paths"`
	}
	require.NoError(t, yaml.Unmarshal(doc, &spec))
	routes := regexp.MustCompile(`mux\.Handle(?:Func)?\("([A-Z]+) (/[^"]*)"`).FindAllStringSubmatch(string(src), -1)
	require.NotEmpty(t, routes)
	for _, r := range routes {
		method, path := strings.ToLower(r[1]), r[2]
		ops, ok := spec.Paths[path]
		if assert.True(t, ok, "%s is not in openapi.yaml", path) {
			assert.Contains(t, ops, method, "%s %s is not in openapi.yaml", r[1], path)
		}
	}
}
