package tenants_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/argus-remote/argus/controlplane/tenants"
)

func TestCheckApproval_BoundsBeforeTheDatabase(t *testing.T) {
	for _, c := range []struct {
		mode    string
		timeout time.Duration
		want    error
	}{
		{"required", 10 * time.Minute, nil},
		{"off", 0, nil},
		{"required", 5 * time.Second, nil},
		{"required", time.Hour, nil},
		{"required", 4 * time.Second, tenants.ErrBadApprovalTimeout},
		{"required", time.Hour + time.Second, tenants.ErrBadApprovalTimeout},
		{"required", -time.Minute, tenants.ErrBadApprovalTimeout},
		{"", 0, tenants.ErrBadApprovalMode},
		{"Required", 0, tenants.ErrBadApprovalMode},
		{"on", time.Minute, tenants.ErrBadApprovalMode},
	} {
		assert.Equal(t, c.want, tenants.CheckApproval(c.mode, c.timeout), "%q %v", c.mode, c.timeout)
	}
}
