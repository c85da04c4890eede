-- A node's fixed DHCP address (its reservation): it always gets this address from lbfleet's DHCP.
ALTER TABLE nodes ADD COLUMN reserved_address TEXT;
CREATE UNIQUE INDEX nodes_reserved_address ON nodes(reserved_address) WHERE reserved_address IS NOT NULL;
