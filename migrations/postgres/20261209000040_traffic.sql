-- Traffic history for the dashboard's graphs, the traffic API and /metrics (server::fleet::traffic): what each
-- node's IPVS counters moved by, per service (`real_server` = '') and per real server, summed into buckets of
-- `step_s` seconds (10 s kept for an hour, 300 s kept for a week). `span_ms` is the time the summed counter
-- deltas cover, so a bucket's rate is delta * 1000 / span_ms. One row per node, series and bucket (the key; a node
-- moved to another cluster within a bucket carries it along):
-- the row count is bounded by series x buckets kept, and retention prunes by age, rows and bytes.
CREATE TABLE traffic_points (
    cluster      TEXT   NOT NULL,
    node_id      BIGINT NOT NULL,
    service      TEXT   NOT NULL,
    real_server  TEXT   NOT NULL,
    step_s       BIGINT NOT NULL,
    bucket_ms    BIGINT NOT NULL,
    span_ms      BIGINT NOT NULL,
    connections  BIGINT NOT NULL,
    bytes_in     BIGINT NOT NULL,
    bytes_out    BIGINT NOT NULL,
    PRIMARY KEY (node_id, step_s, bucket_ms, service, real_server)
);
-- The cluster page reads only service rows: a partial index, which real-server rows (most of them) never touch.
CREATE INDEX traffic_points_services ON traffic_points(cluster, step_s, bucket_ms) WHERE real_server = '';
CREATE INDEX traffic_points_bucket ON traffic_points(bucket_ms);
