-- Operator-armed enrollment windows (boot.require_armed_enrollment): while armed, a known node's boot script may
-- carry an enrollment token; after `until_ms`, or without a row, it carries none.
CREATE TABLE boot_expected (
    node_id  INTEGER PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    until_ms INTEGER NOT NULL,
    armed_by TEXT    NOT NULL
);
