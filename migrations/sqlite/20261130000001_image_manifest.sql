-- What `lbfleet-server image add` verified from an image's manifest.json: NULL for images registered by hand
-- (PUT /api/v1/images/NAME with files placed in the boot directory).
ALTER TABLE images ADD COLUMN kernel_version TEXT;
ALTER TABLE images ADD COLUMN agent_version TEXT;
ALTER TABLE images ADD COLUMN kernel_sha256 TEXT;
ALTER TABLE images ADD COLUMN initrd_sha256 TEXT;
