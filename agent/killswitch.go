package agent

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/argus-remote/argus/topics"
)

// killSwitchFile, present in the state directory, engages the kill switch.
// A file is what a tenant's own tooling can set without talking to the
// agent, and it survives restarts.
const killSwitchFile = "kill-switch"

// EngageKillSwitch engages the kill switch: the running agent ends any
// session within a second and refuses activations until it is released.
func EngageKillSwitch(dir, reason string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, killSwitchFile), []byte(time.Now().UTC().Format(time.RFC3339)+" "+reason+"\n"), 0o600)
}

// ReleaseKillSwitch releases it.
func ReleaseKillSwitch(dir string) error {
	err := os.Remove(filepath.Join(dir, killSwitchFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// KillSwitchEngaged reports whether the kill switch is engaged in dir.
func KillSwitchEngaged(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, killSwitchFile))
	return err == nil
}

// DisableKillSwitchWatch stops the agent polling its kill-switch file (the
// load harness runs thousands of agents in one process, where 4 polls a
// second each would cost more than the server it measures; a real agent
// runs alone).
func (a *Agent) DisableKillSwitchWatch() { a.noKillSwitchWatch = true }

// watchKillSwitch polls the kill-switch file; on engagement it ends the
// session and tells the server why.
func (a *Agent) watchKillSwitch(ctx context.Context) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		engaged := KillSwitchEngaged(a.cfg.StateDir)
		a.mu.Lock()
		if engaged == a.killSwitch {
			a.mu.Unlock()
			continue
		}
		a.killSwitch = engaged
		sid := ""
		if engaged && a.sess != nil {
			sid = a.sess.id
			a.endSessionLocked("kill switch engaged")
		}
		a.writeStatusLocked()
		a.mu.Unlock()
		if engaged {
			a.log.Warn("KILL SWITCH ENGAGED: remote support refused until released")
			a.emit("kill_switch", sid)
			if sid != "" {
				a.unsubscribeCommands(ctx)
			}
			// The notice: the server ends the session with this reason.
			a.publish(ctx, topics.ActivationAck, topics.ActivationAckMsg{V: topics.Version, AgentID: a.st.AgentID, SessionID: sid, State: topics.StateDormant, Error: "agent_kill_switch"}, 1)
		} else {
			a.log.Warn("kill switch released")
		}
		a.heartbeat(ctx)
	}
}
