package audit_test

import (
	"bytes"
	"context"
	"encoding/json"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/argus-remote/argus/controlplane/audit"
)

// reconcileWindow verifies the whole chain: links, sequence and hashes.
func reconcileWindow(ctx context.Context, pool *pgxpool.Pool) (bool, error) {
	rows, err := pool.Query(ctx, "SELECT seq, payload::text, prev_hash, hash FROM events ORDER BY seq")
	if err != nil {
		return false, err
	}
	defer rows.Close()
	prev, want := make([]byte, 32), int64(1)
	for rows.Next() {
		var seq int64
		var payload string
		var ph, h []byte
		if err := rows.Scan(&seq, &payload, &ph, &h); err != nil {
			return false, err
		}
		canon, err := audit.Canonical(json.RawMessage(payload))
		if err != nil || seq != want || !bytes.Equal(ph, prev) || !bytes.Equal(audit.ChainHash(ph, canon), h) {
			return false, err
		}
		prev, want = h, want+1
	}
	return true, rows.Err()
}
