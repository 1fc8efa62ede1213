package cmdutil

import (
	"fmt"
	"time"
)

// Time formats an optional time for a table: "-" when unset.
func Time(t *time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// Ago formats how long ago t was, for people: "12s ago", "-" when unset.
func Ago(t *time.Time, now time.Time) string {
	if t == nil || t.IsZero() {
		return "never"
	}
	d := now.Sub(*t).Round(time.Second)
	if d < 0 {
		d = 0
	}
	return fmt.Sprintf("%s ago", d)
}

// YesNo formats a flag for a table.
func YesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
