-- The control plane's own registry (issue 21): every `lbfleet-server serve` process on this database registers
-- at start and heartbeats. A server is dead when its heartbeat is older than a few of its own intervals; the
-- first live server to notice marks it (`down_since`), raises the alert (`alert_id`, a row of `alerts`) and
-- records an event; the alert closes when the server heartbeats again. `stopped_at` says it stopped cleanly.
-- Rows not heard from for `server_retention` are deleted. Portable SQL (SQLite and PostgreSQL).
CREATE TABLE servers (
    id                    TEXT    PRIMARY KEY,
    name                  TEXT    NOT NULL,
    version               TEXT    NOT NULL,
    management_url        TEXT    NOT NULL,
    boot_url              TEXT,
    tls_pin               TEXT,
    dhcp_networks         TEXT    NOT NULL DEFAULT '[]',
    started_at            BIGINT  NOT NULL,
    heartbeat_at          BIGINT  NOT NULL,
    heartbeat_interval_ms BIGINT  NOT NULL,
    stopped_at            BIGINT,
    down_since            BIGINT,
    alert_id              BIGINT
);
CREATE INDEX servers_heartbeat ON servers(heartbeat_at);
