// Command argus-server runs the ARGUS remote support broker and control plane.
package main

import (
	"os"

	"github.com/argus-remote/argus/server/cli"
)

func main() {
	os.Exit(cli.Execute(os.Args[1:], cli.IOStreams{Out: os.Stdout, ErrOut: os.Stderr}))
}
