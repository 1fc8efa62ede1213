// Package cmdtree makes a cobra command tree strict about unknown
// subcommands: a parent command (one that only groups others) refuses a
// word it does not know, naming it with cobra's suggestions, instead of
// printing its help and exiting 0. It never changes a command that runs
// something itself.
package cmdtree

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// RefuseUnknownSubcommands walks the tree under root and makes every
// parent command without a Run of its own refuse an unknown subcommand.
// With nothing after it, a parent still prints its help and succeeds. An
// unknown command is reported before any flag error, since the flags that
// follow it belong to the command that was meant. Call it once the tree
// is built.
func RefuseUnknownSubcommands(root *cobra.Command) {
	// cobra adds its `completion` parent only when it executes; add it
	// now so it is walked like the others.
	root.InitDefaultCompletionCmd()
	walk(root)
	inner := root.FlagErrorFunc()
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		// The words pflag read before the bad flag are in Args().
		if IsGroup(c) {
			if args := c.Flags().Args(); len(args) > 0 {
				return unknown(c, args[0])
			}
		}
		return inner(c, err)
	})
}

func walk(c *cobra.Command) {
	for _, sub := range c.Commands() {
		walk(sub)
	}
	if !c.HasSubCommands() || c.Runnable() {
		return
	}
	// The root already refuses unknown words (cobra's legacy check); it
	// gets the same treatment so every parent answers alike.
	c.Args = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return unknown(c, args[0])
		}
		return nil
	}
	c.RunE = func(c *cobra.Command, args []string) error {
		return c.Help()
	}
	if c.Annotations == nil {
		c.Annotations = map[string]string{}
	}
	c.Annotations[groupKey] = "true"
}

// groupKey marks, in a command's annotations, a parent made strict here.
const groupKey = "cmdtree.group"

// IsGroup reports whether c is a parent command that only groups others
// (its Run is the help set here). Hooks that prepare a command's work
// (loading configuration) can skip it.
func IsGroup(c *cobra.Command) bool { return c.Annotations[groupKey] == "true" }

func unknown(c *cobra.Command, word string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "unknown command %q for %q", word, c.CommandPath())
	if c.SuggestionsMinimumDistance <= 0 {
		c.SuggestionsMinimumDistance = 2 // cobra's own default
	}
	if s := c.SuggestionsFor(word); !c.DisableSuggestions && len(s) > 0 {
		b.WriteString("\n\nDid you mean this?\n")
		for _, n := range s {
			fmt.Fprintf(&b, "\t%s\n", n)
		}
	}
	fmt.Fprintf(&b, "\nRun '%s --help' for usage.", c.CommandPath())
	return errors.New(b.String())
}
