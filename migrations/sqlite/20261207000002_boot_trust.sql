-- Operator-armed enrollment windows (boot.require_armed_enrollment): while armed, a known node's boot script may
-- carry an enrollment token; after `until_ms`, or without a row, it carries none.
CREATE TABLE boot_expected (
    node_id  INTEGER PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    until_ms INTEGER NOT NULL,
    armed_by TEXT    NOT NULL
);

-- Relay option 82 pinning: a node whose request must arrive through a relay with this circuit-id (RFC 3046
-- sub-option 1); a request for its MAC with another circuit-id, or none, gets no lease.
CREATE TABLE dhcp_circuit_pins (
    node_id    INTEGER PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    circuit_id BLOB    NOT NULL
);
