package support

import "time"

// SetApprovalPoll lets tests follow a waiting activation quickly.
func SetApprovalPoll(d time.Duration) func() {
	old := approvalPoll
	approvalPoll = d
	return func() { approvalPoll = old }
}
