-- The fleet generation of the last change to a cluster's spec (VRRP settings, VIPs, services, real servers).
-- Role documents are built from a cached copy of the cluster while this number is unchanged.
ALTER TABLE clusters ADD COLUMN content_generation BIGINT NOT NULL DEFAULT 0;
