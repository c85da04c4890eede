-- Booting while the database is down (issue 21 item 4): the fleet-wide key that signs stateless boot credentials
-- (one row; each server keeps a copy in its local boot cache), and the boot credentials already exchanged for a
-- node credential (each exchanges once; rows are pruned once expired).
CREATE TABLE boot_credential_key (
    id         BIGINT  PRIMARY KEY CHECK (id = 1),
    key_hex    TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);

CREATE TABLE boot_credentials_redeemed (
    nonce_hex  TEXT    PRIMARY KEY,
    node_id    BIGINT  NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    expires_at BIGINT  NOT NULL
);
