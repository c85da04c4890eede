-- VRRP knobs of a cluster beyond version/interval/preempt (issue 12): preempt delay, gratuitous ARP, IPVS
-- connection sync; and a VIP's own interface (an internal VIP on another NIC, moved with the external ones).
ALTER TABLE clusters ADD COLUMN preempt_delay_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE clusters ADD COLUMN garp_count INTEGER NOT NULL DEFAULT 3;
ALTER TABLE clusters ADD COLUMN garp_spacing_ms INTEGER NOT NULL DEFAULT 100;
ALTER TABLE clusters ADD COLUMN garp_refresh_ms INTEGER NOT NULL DEFAULT 0;
-- Both NULL (no connection sync) or both set.
ALTER TABLE clusters ADD COLUMN sync_interface TEXT;
ALTER TABLE clusters ADD COLUMN sync_id INTEGER CHECK (sync_id IS NULL OR sync_id BETWEEN 0 AND 255);
-- NULL: the cluster's VRRP interface.
ALTER TABLE cluster_vips ADD COLUMN interface TEXT;
