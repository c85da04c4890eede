-- Remote reboot and rolling image upgrades (issue 24).
-- `reboot_generation`: goes into the node's role document; an agent that sees it above the value it booted
-- with hands over (VRRP priority 0) and reboots the machine. Only grows.
ALTER TABLE nodes ADD COLUMN reboot_generation BIGINT NOT NULL DEFAULT 0;
-- When the last reboot was requested, until the node enrolls again: the re-enrollment that follows a reboot
-- the server asked for is expected (no `reenrolled` alert); a second one is not.
ALTER TABLE nodes ADD COLUMN reboot_requested_at BIGINT;

-- A rollout of one image over clusters or nodes (fleet::rollouts). `spec` is the request as accepted (JSON),
-- `progress` the engine's state (JSON: the node queue and where each node is). `lease_owner`/`lease_until`:
-- the one server driving it now (a compare-and-set claim; another server takes over once the lease expired).
CREATE TABLE rollouts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    image        TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('running', 'paused', 'succeeded', 'failed', 'aborted')),
    spec         TEXT    NOT NULL,
    progress     TEXT    NOT NULL,
    reason       TEXT,
    created_by   TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL,
    lease_owner  TEXT,
    lease_until  BIGINT
);
CREATE INDEX rollouts_state ON rollouts(state);
