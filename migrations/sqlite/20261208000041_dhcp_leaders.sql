-- DHCP hot standby (boot::dhcp::leader): which lbfleet-server answers DHCP on each boot network. The active
-- server bumps `seq` every boot.dhcp_leader_renew; a standby that sees (holder, seq) unchanged for
-- boot.dhcp_leader_ttl on its own monotonic clock takes the row over with a compare-and-set that bumps `epoch`.
-- Lease writes check (holder, epoch) in their own transaction, so a deposed server can never commit a lease.
-- `renewed_at` is the holder's wall clock, for people and dashboards only: no decision reads it.
CREATE TABLE dhcp_leaders (
    network        TEXT   NOT NULL PRIMARY KEY,
    holder         TEXT   NOT NULL,
    holder_address TEXT   NOT NULL,
    epoch          BIGINT NOT NULL,
    seq            BIGINT NOT NULL,
    ttl_ms         BIGINT NOT NULL,
    renewed_at     BIGINT NOT NULL
);
