-- lbfleet schema, version 1. The only place the schema is defined.
-- Times are INTEGER milliseconds since the Unix epoch (UTC). Booleans are INTEGER 0/1.
-- Kept to SQL that PostgreSQL also accepts (BIGINT, partial unique indexes, CHECK), so a Postgres backend
-- can reuse it with type tweaks only.

-- Singleton counter: every change that affects a node's role takes the next value as that node's generation,
-- so generations only grow, fleet-wide, across restarts.
CREATE TABLE fleet_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  BIGINT  NOT NULL
);
INSERT INTO fleet_state (id, generation) VALUES (1, 0);

CREATE TABLE users (
    id             INTEGER PRIMARY KEY,
    name           TEXT    NOT NULL UNIQUE,
    role           TEXT    NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    password_hash  TEXT    NOT NULL,
    disabled       INTEGER NOT NULL DEFAULT 0,
    created_at     BIGINT  NOT NULL
);

CREATE TABLE sessions (
    id            INTEGER PRIMARY KEY,
    token_hash    TEXT    NOT NULL UNIQUE,
    csrf_token    TEXT    NOT NULL,
    user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT  NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE api_tokens (
    id            INTEGER PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    token_hash    TEXT    NOT NULL UNIQUE,
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT,
    last_used_at  BIGINT
);

CREATE TABLE images (
    name          TEXT    PRIMARY KEY,
    kernel        TEXT    NOT NULL,
    initrd        TEXT    NOT NULL,
    cmdline       TEXT    NOT NULL DEFAULT '',
    is_default    INTEGER NOT NULL DEFAULT 0,
    created_at    BIGINT  NOT NULL
);
CREATE UNIQUE INDEX images_one_default ON images(is_default) WHERE is_default = 1;

CREATE TABLE nodes (
    id                  INTEGER PRIMARY KEY,
    mac                 TEXT    NOT NULL UNIQUE,
    hostname            TEXT    UNIQUE,
    state               TEXT    NOT NULL CHECK (state IN ('discovered', 'rejected', 'ready', 'assigned', 'serving', 'retired')),
    image               TEXT    REFERENCES images(name) ON UPDATE CASCADE,
    address             TEXT,
    role_generation     BIGINT  NOT NULL DEFAULT 0,
    applied_generation  BIGINT  NOT NULL DEFAULT 0,
    agent_version       TEXT,
    image_version       TEXT,
    vrrp_state          TEXT,
    last_report         TEXT,
    last_seen_at        BIGINT,
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL
);
CREATE INDEX nodes_state ON nodes(state);

CREATE TABLE clusters (
    id                  INTEGER PRIMARY KEY,
    name                TEXT    NOT NULL UNIQUE,
    vrid                INTEGER NOT NULL CHECK (vrid BETWEEN 1 AND 255),
    interface           TEXT    NOT NULL,
    vrrp_version        INTEGER NOT NULL CHECK (vrrp_version IN (2, 3)),
    advert_interval_ms  INTEGER NOT NULL,
    preempt             INTEGER NOT NULL,
    unicast_peers       TEXT    NOT NULL DEFAULT '[]',
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL,
    UNIQUE (interface, vrid)
);

CREATE TABLE cluster_vips (
    cluster_id  INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    address     TEXT    NOT NULL UNIQUE,
    prefix      INTEGER NOT NULL,
    PRIMARY KEY (cluster_id, position)
);

CREATE TABLE virtual_services (
    id                  INTEGER PRIMARY KEY,
    cluster_id          INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    position            INTEGER NOT NULL,
    vip                 TEXT    NOT NULL,
    port                INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    protocol            TEXT    NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    scheduler           TEXT    NOT NULL,
    forward             TEXT    NOT NULL CHECK (forward IN ('nat', 'dr', 'tun')),
    persistence_s       BIGINT  NOT NULL DEFAULT 0,
    persistence_prefix  INTEGER,
    health_check        TEXT    NOT NULL,
    UNIQUE (vip, port, protocol)
);
CREATE INDEX virtual_services_cluster ON virtual_services(cluster_id);

CREATE TABLE real_servers (
    id          INTEGER PRIMARY KEY,
    service_id  INTEGER NOT NULL REFERENCES virtual_services(id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    address     TEXT    NOT NULL,
    port        INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    weight      BIGINT  NOT NULL CHECK (weight BETWEEN 0 AND 65535),
    enabled     INTEGER NOT NULL DEFAULT 1,
    UNIQUE (service_id, address, port)
);

-- A node belongs to at most one cluster (node_id is the key); at most one active per cluster.
CREATE TABLE assignments (
    node_id     INTEGER PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    cluster_id  INTEGER NOT NULL REFERENCES clusters(id),
    role        TEXT    NOT NULL CHECK (role IN ('active', 'backup')),
    priority    INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 254),
    created_at  BIGINT  NOT NULL
);
CREATE UNIQUE INDEX assignments_one_active ON assignments(cluster_id) WHERE role = 'active';
CREATE INDEX assignments_cluster ON assignments(cluster_id);

-- DHCP leases (filled by the boot services).
CREATE TABLE leases (
    address     TEXT    PRIMARY KEY,
    mac         TEXT    NOT NULL,
    node_id     INTEGER REFERENCES nodes(id) ON DELETE SET NULL,
    state       TEXT    NOT NULL CHECK (state IN ('offered', 'bound', 'released', 'declined')),
    expires_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
CREATE INDEX leases_mac ON leases(mac);

-- Per-node agent credentials (one live credential per node; re-enrolling replaces it).
CREATE TABLE node_credentials (
    node_id        INTEGER PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    secret_hash    TEXT    NOT NULL UNIQUE,
    created_at     BIGINT  NOT NULL,
    last_used_at   BIGINT
);

-- One-time enrollment tokens, handed to a booting node on its kernel command line.
CREATE TABLE enrollment_tokens (
    id           INTEGER PRIMARY KEY,
    token_hash   TEXT    NOT NULL UNIQUE,
    node_id      INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    created_at   BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL,
    used_at      BIGINT
);

-- Append-only, hash-chained. hash = SHA-256 over the row's fields and the previous row's hash.
CREATE TABLE audit_log (
    seq          INTEGER PRIMARY KEY,
    at           BIGINT  NOT NULL,
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    target       TEXT    NOT NULL,
    before_json  TEXT,
    after_json   TEXT,
    prev_hash    TEXT    NOT NULL,
    hash         TEXT    NOT NULL
);
CREATE INDEX audit_log_at ON audit_log(at);
CREATE INDEX audit_log_target ON audit_log(target);

-- The chain's head, updated with every append, so deleting the newest rows is detectable too.
CREATE TABLE audit_head (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    seq    BIGINT NOT NULL,
    hash   TEXT   NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Operational events: enrollments, VRRP transitions, health flaps. Not part of the audit chain.
CREATE TABLE events (
    id        INTEGER PRIMARY KEY,
    at        BIGINT  NOT NULL,
    kind      TEXT    NOT NULL,
    node_id   INTEGER REFERENCES nodes(id) ON DELETE SET NULL,
    cluster   TEXT,
    message   TEXT    NOT NULL,
    data      TEXT
);
CREATE INDEX events_at ON events(at);
