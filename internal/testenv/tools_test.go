package testenv_test

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/argus-remote/argus/internal/testenv"
)

// recorder is a testing.TB that records a skip or a failure and ends the
// goroutine, as the real ones do.
type recorder struct {
	testing.TB
	skipped, failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Skipf(format string, args ...any) {
	r.skipped = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func needTool(t *testing.T, program, pkg string) (*recorder, string) {
	r := &recorder{TB: t}
	var path string
	done := make(chan struct{})
	go func() {
		defer close(done)
		path = testenv.NeedTool(r, program, pkg)
	}()
	<-done
	return r, path
}

func TestNeedTool_MissingToolSkipsNamingThePackage(t *testing.T) {
	t.Setenv(testenv.EnvRequireAll, "")
	r, _ := needTool(t, "argus-no-such-tool", "argus-no-such-package")
	assert.Empty(t, r.failed)
	assert.Contains(t, r.skipped, "argus-no-such-tool is not installed")
	assert.Contains(t, r.skipped, "apt-get install argus-no-such-package")
}

func TestNeedTool_MissingToolFailsWhenAllAreRequired(t *testing.T) {
	t.Setenv(testenv.EnvRequireAll, "1")
	r, _ := needTool(t, "argus-no-such-tool", "argus-no-such-package")
	assert.Empty(t, r.skipped)
	assert.Contains(t, r.failed, "argus-no-such-tool is not installed")
	assert.Contains(t, r.failed, "ARGUS_REQUIRE_ALL=1")
	assert.Contains(t, r.failed, "argus-no-such-package")
}

func TestNeedTool_PresentToolIsFound(t *testing.T) {
	t.Setenv(testenv.EnvRequireAll, "1")
	r, path := needTool(t, "sh", "dash")
	assert.Empty(t, r.skipped)
	assert.Empty(t, r.failed)
	assert.NotEmpty(t, path)
}
