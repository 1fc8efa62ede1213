package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// EnvRequireAll, set to 1 (as .ci/run does, having installed every tool),
// turns a test's missing tool from a skip into a failure.
const EnvRequireAll = "ARGUS_REQUIRE_ALL"

// NeedTool returns the path of program (looked up on PATH) for a test that
// cannot run without it, such as ffmpeg or Chromium. When it is missing
// the test is skipped, naming the Debian package that provides it; with
// ARGUS_REQUIRE_ALL=1 it fails instead, so CI cannot pass by skipping.
func NeedTool(t testing.TB, program, debianPackage string) string {
	t.Helper()
	path, err := exec.LookPath(program)
	if err == nil {
		return path
	}
	if os.Getenv(EnvRequireAll) == "1" {
		t.Fatalf("%s is not installed (%v) and %s=1: install Debian's %s package (apt-get install %s)", program, err, EnvRequireAll, debianPackage, debianPackage)
	}
	t.Skipf("%s is not installed: install Debian's %s package (apt-get install %s) to run this test", program, debianPackage, debianPackage)
	return ""
}
