// Command argus-agent runs beside a tenant's streaming agent and gives ARGUS
// operators audited, consented, time-boxed remote support.
package main

import (
	"os"

	"github.com/argus-remote/argus/agent/cli"
)

func main() {
	os.Exit(cli.Execute(os.Args[1:], cli.IOStreams{Out: os.Stdout, ErrOut: os.Stderr}))
}
