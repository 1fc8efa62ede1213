// Command argusctl operates ARGUS remote support through the control-plane API.
package main

import (
	"fmt"
	"os"

	"github.com/argus-remote/argus/argusctl/iostreams"
	"github.com/argus-remote/argus/argusctl/root"
)

func main() {
	io := iostreams.System()
	cmd, _ := root.NewCmdRoot(io)
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(io.ErrOut, "argusctl:", err)
		os.Exit(1)
	}
}
