-- Report deltas (issue 25): the sequence number of the report stored in `nodes.last_report`, the base an agent's
-- next delta must name (server::fleet::enrollment). 0 = no numbered report (none yet, or from an agent that
-- predates deltas): a delta never applies to it.
ALTER TABLE nodes ADD COLUMN report_seq INTEGER NOT NULL DEFAULT 0;
