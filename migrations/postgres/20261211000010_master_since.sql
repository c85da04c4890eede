-- When this node's reports started to say MASTER, by the server's clock (ms since the epoch): the first report
-- that carried its newest transition to MASTER. The split-brain rule (server::fleet::alerts) compares it with
-- when the other members were last heard, also by the server's clock; the agent's own transition time is by
-- its clock, which on a diskless node without NTP can be a second or more off. NULL when not master.
ALTER TABLE nodes ADD COLUMN master_since_at BIGINT;
