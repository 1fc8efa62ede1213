// Command argusctl operates ARGUS remote support through the control-plane API.
package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel"

	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/root"
	"github.com/argus-remote/argus/argusctl/version"
	"github.com/argus-remote/argus/internal/telemetry"
)

func main() {
	io := iostreams.System()
	// Each invocation is the root of its trace; spans leave the process
	// only when ARGUSCTL_OTLP_ENDPOINT is set.
	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, telemetry.Options{Service: "argusctl", Version: version.Version, OTLPEndpoint: os.Getenv("ARGUSCTL_OTLP_ENDPOINT")})
	if err != nil {
		fmt.Fprintln(io.ErrOut, "argusctl: telemetry:", err)
		os.Exit(1)
	}
	ctx, span := otel.Tracer("argusctl").Start(ctx, "argusctl "+commandPath(os.Args[1:]))
	cmd, _ := root.NewCmdRoot(io)
	err = cmd.ExecuteContext(ctx)
	span.End()
	_ = tel.Shutdown(context.Background())
	if err != nil {
		fmt.Fprintln(io.ErrOut, "argusctl:", err)
		os.Exit(1)
	}
}

// commandPath is the command words, without flags or arguments that
// could carry secrets.
func commandPath(args []string) string {
	var words []string
	for _, a := range args {
		if strings.HasPrefix(a, "-") || len(words) == 2 {
			break
		}
		words = append(words, a)
	}
	return strings.Join(words, " ")
}
