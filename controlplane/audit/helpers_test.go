package audit_test

import (
	"bytes"
	"context"
	"encoding/json"
	"reflect"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/argus-remote/argus/controlplane/audit"
)

// reconcileWindow verifies the whole chain: links, sequence and hashes,
// each hash over the bytes the event keeps (recomputed from the payload
// for events from before they were kept), and that the payload says
// the same as those bytes.
func reconcileWindow(ctx context.Context, pool *pgxpool.Pool) (bool, error) {
	rows, err := pool.Query(ctx, "SELECT seq, payload::text, canonical, prev_hash, hash FROM events ORDER BY seq")
	if err != nil {
		return false, err
	}
	defer rows.Close()
	prev, want := make([]byte, 32), int64(1)
	for rows.Next() {
		var seq int64
		var payload string
		var canon, ph, h []byte
		if err := rows.Scan(&seq, &payload, &canon, &ph, &h); err != nil {
			return false, err
		}
		if canon == nil {
			if canon, err = audit.Canonical(json.RawMessage(payload)); err != nil {
				return false, err
			}
		} else if !sameJSON(canon, []byte(payload)) {
			return false, nil
		}
		if seq != want || !bytes.Equal(ph, prev) || !bytes.Equal(audit.ChainHash(ph, canon), h) {
			return false, nil
		}
		prev, want = h, want+1
	}
	return true, rows.Err()
}

// sameJSON compares two JSON texts by value, as jsonb does.
func sameJSON(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}
