-- Alerts that must outlive event retention (issue 20): a node that re-enrolled while its agent was alive is
-- raised here and stays until an operator acknowledges it or it expires. Event pruning (by age, rows or
-- bytes) never touches this table, so a flood of agent events cannot erase an alert. One open row per
-- (kind, node): raising it again bumps `count` and `raised_at` instead of adding rows.
CREATE TABLE alerts (
    id          INTEGER PRIMARY KEY,
    kind        TEXT    NOT NULL,
    node_id     INTEGER REFERENCES nodes(id) ON DELETE CASCADE,
    cluster     TEXT,
    message     TEXT    NOT NULL,
    first_at    BIGINT  NOT NULL,
    raised_at   BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    count       BIGINT  NOT NULL DEFAULT 1,
    acked_at    BIGINT,
    acked_by    TEXT
);
CREATE INDEX alerts_open ON alerts(kind, node_id) WHERE acked_at IS NULL;

-- Re-enrollment alerts raised before this table existed (as events, alerted on for 24 h) carry over.
INSERT INTO alerts (kind, node_id, cluster, message, first_at, raised_at, expires_at)
    SELECT 'reenrolled', node_id, cluster, message, at, at, at + 86400000
    FROM events WHERE kind = 'reenrolled_while_alive' AND at + 86400000 > CAST(strftime('%s', 'now') AS INTEGER) * 1000;
