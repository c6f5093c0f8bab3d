//! Metric names (all `bsn_gateway_*`), their descriptions, and the Prometheus recorder.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS_TOTAL: &str = "bsn_gateway_http_requests_total";
pub const HTTP_REQUEST_SECONDS: &str = "bsn_gateway_http_request_duration_seconds";
pub const HSM_OPERATION_SECONDS: &str = "bsn_gateway_hsm_operation_duration_seconds";
pub const HSM_ERRORS_TOTAL: &str = "bsn_gateway_hsm_errors_total";
pub const HSM_SESSIONS_IN_USE: &str = "bsn_gateway_hsm_sessions_in_use";
pub const HSM_SESSION_POOL_SIZE: &str = "bsn_gateway_hsm_session_pool_size";
pub const HSM_SESSION_COPIES: &str = "bsn_gateway_hsm_session_copies";
pub const HSM_UP: &str = "bsn_gateway_hsm_up";
pub const HSM_RECONNECTS_TOTAL: &str = "bsn_gateway_hsm_reconnects_total";
pub const HSM_SESSION_WAIT_TIMEOUTS_TOTAL: &str = "bsn_gateway_hsm_session_wait_timeouts_total";
pub const AUDIT_FSYNC_SECONDS: &str = "bsn_gateway_audit_fsync_duration_seconds";
pub const KEYS: &str = "bsn_gateway_keys";
pub const BUILD_INFO: &str = "bsn_gateway_build_info";
pub const VERIFY_TOTAL: &str = "bsn_gateway_verify_total";
pub const VERIFY_OVERLOADED_TOTAL: &str = "bsn_gateway_verify_overloaded_total";
pub const VERIFY_QUEUE_ITEMS: &str = "bsn_gateway_verify_queue_items";
pub const VERIFY_QUEUE_CAPACITY_ITEMS: &str = "bsn_gateway_verify_queue_capacity_items";
pub const VERIFY_QUEUE_WAIT_SECONDS: &str = "bsn_gateway_verify_queue_wait_seconds";
pub const VERIFY_BATCH_SECONDS: &str = "bsn_gateway_verify_batch_duration_seconds";
pub const VERIFY_BATCH_ITEMS: &str = "bsn_gateway_verify_batch_items";
pub const VERIFY_WORKERS: &str = "bsn_gateway_verify_workers";
pub const VERIFY_MULTI_BUFFER: &str = "bsn_gateway_verify_multi_buffer";
pub const VERIFY_MULTI_BUFFER_LANES_TOTAL: &str = "bsn_gateway_verify_multi_buffer_lanes_total";
pub const VERIFY_KEY_CACHE_TOTAL: &str = "bsn_gateway_verify_key_cache_total";
pub const TX_ACCEPTED_TOTAL: &str = "bsn_gateway_transactions_accepted_total";
pub const TX_REJECTED_TOTAL: &str = "bsn_gateway_transactions_rejected_total";
pub const OUTBOX_PENDING: &str = "bsn_gateway_outbox_pending_transactions";
pub const OUTBOX_BYTES: &str = "bsn_gateway_outbox_bytes";
pub const OUTBOX_SEGMENTS: &str = "bsn_gateway_outbox_segments";
pub const OUTBOX_TRACKED: &str = "bsn_gateway_outbox_tracked_ids";
pub const OUTBOX_FSYNC_SECONDS: &str = "bsn_gateway_outbox_fsync_duration_seconds";
pub const OUTBOX_WRITE_ERRORS_TOTAL: &str = "bsn_gateway_outbox_write_errors_total";
pub const FORWARD_TOTAL: &str = "bsn_gateway_forward_attempts_total";
pub const FORWARD_RETRIES_TOTAL: &str = "bsn_gateway_forward_retries_total";
pub const FORWARD_SECONDS: &str = "bsn_gateway_forward_duration_seconds";
pub const LEDGER_NODE_UP: &str = "bsn_gateway_ledger_node_up";
pub const LEDGER_NODE_BREAKER_STATE: &str = "bsn_gateway_ledger_node_breaker_state";
pub const AUTH_FAILURES_TOTAL: &str = "bsn_gateway_auth_failures_total";
pub const HSM_ORPHAN_OBJECTS: &str = "bsn_gateway_hsm_orphan_objects";
pub const KEYS_MISSING_OBJECTS: &str = "bsn_gateway_keys_missing_objects";
pub const AUDIT_CHECKPOINTS_TOTAL: &str = "bsn_gateway_audit_checkpoints_total";
pub const CONFIG_RELOADS_TOTAL: &str = "bsn_gateway_config_reloads_total";
pub const CONNECTIONS_REFUSED_TOTAL: &str = "bsn_gateway_connections_refused_total";

/// Latency buckets from 50 µs to 10 s: HSM signs take tens of µs, fsyncs milliseconds.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Micro-batch sizes, in items.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Installs the global recorder. Must run inside the tokio runtime (it spawns upkeep).
pub fn install() -> PrometheusHandle {
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .expect("buckets are not empty")
        .set_buckets_for_metric(Matcher::Full(VERIFY_BATCH_ITEMS.into()), BATCH_BUCKETS)
        .expect("buckets are not empty")
        .install_recorder()
        .expect("the metrics recorder is installed once");
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    handle
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests answered, by route, method and status"
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "HTTP request latency by route"
    );
    describe_histogram!(
        HSM_OPERATION_SECONDS,
        Unit::Seconds,
        "PKCS#11 operation latency by operation and algorithm"
    );
    describe_counter!(HSM_ERRORS_TOTAL, "PKCS#11 errors by return code");
    describe_gauge!(
        HSM_SESSIONS_IN_USE,
        "PKCS#11 sessions checked out of the pool"
    );
    describe_gauge!(HSM_SESSION_POOL_SIZE, "PKCS#11 session pool size");
    describe_gauge!(
        HSM_SESSION_COPIES,
        "Keys held with a session copy made in the token for signing (profiles with sign_with_session_copy; a key the module would not copy counts as its own)"
    );
    describe_gauge!(
        HSM_UP,
        "1 while the PKCS#11 module is connected and logged in; 0 while the device is lost"
    );
    describe_counter!(
        HSM_RECONNECTS_TOTAL,
        "Attempts to re-initialise the PKCS#11 module after the device was lost, by result"
    );
    describe_counter!(
        HSM_SESSION_WAIT_TIMEOUTS_TOTAL,
        "Requests answered 503 because no PKCS#11 session freed up in time"
    );
    describe_histogram!(
        AUDIT_FSYNC_SECONDS,
        Unit::Seconds,
        "Time to write and fsync one group-committed batch of audit lines"
    );
    describe_gauge!(KEYS, "Keys in custody by algorithm, custody and state");
    describe_gauge!(BUILD_INFO, "Always 1; the version label tells the build");
    describe_counter!(
        VERIFY_TOTAL,
        "Signatures verified, by algorithm and result (valid or the failure reason)"
    );
    describe_counter!(
        VERIFY_OVERLOADED_TOTAL,
        "Verification calls refused because the queue was full"
    );
    describe_gauge!(
        VERIFY_QUEUE_ITEMS,
        "Items waiting for a verification worker"
    );
    describe_gauge!(
        VERIFY_QUEUE_CAPACITY_ITEMS,
        "Items the verification queue admits before refusing"
    );
    describe_histogram!(
        VERIFY_QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time a verification chunk waited in the queue"
    );
    describe_histogram!(
        VERIFY_BATCH_SECONDS,
        Unit::Seconds,
        "Time a worker spent verifying one micro-batch"
    );
    describe_histogram!(VERIFY_BATCH_ITEMS, "Items per verification micro-batch");
    describe_gauge!(VERIFY_WORKERS, "Verification worker threads");
    describe_gauge!(
        VERIFY_MULTI_BUFFER,
        "1 when ECDSA and SM2 verification runs eight at a time on AVX-512 IFMA"
    );
    describe_counter!(
        VERIFY_MULTI_BUFFER_LANES_TOTAL,
        "Signatures verified on the multi-buffer path (the rest take the scalar path)"
    );
    describe_counter!(
        VERIFY_KEY_CACHE_TOTAL,
        "Public keys of verified items found parsed in the key cache (hit) or parsed now (miss)"
    );
    describe_counter!(
        TX_ACCEPTED_TOTAL,
        "Transactions accepted (vetted and durable), by ledger"
    );
    describe_counter!(
        TX_REJECTED_TOTAL,
        "Transactions rejected at admission, by ledger and reason"
    );
    describe_gauge!(
        OUTBOX_PENDING,
        "Accepted transactions not yet forwarded or failed"
    );
    describe_gauge!(OUTBOX_BYTES, "Bytes in outbox segments on disk");
    describe_gauge!(OUTBOX_SEGMENTS, "Outbox segment files on disk");
    describe_gauge!(
        OUTBOX_TRACKED,
        "Transaction ids remembered for the replay window and status"
    );
    describe_histogram!(
        OUTBOX_FSYNC_SECONDS,
        Unit::Seconds,
        "Time to write and fsync one group-committed outbox batch"
    );
    describe_counter!(OUTBOX_WRITE_ERRORS_TOTAL, "Outbox writes that failed");
    describe_counter!(
        FORWARD_TOTAL,
        "Delivery attempts by ledger, node and result (delivered, refused, retry)"
    );
    describe_counter!(
        FORWARD_RETRIES_TOTAL,
        "Delivery attempts that will be retried, by ledger"
    );
    describe_histogram!(
        FORWARD_SECONDS,
        Unit::Seconds,
        "Time of one delivery attempt to a ledger node"
    );
    describe_gauge!(
        LEDGER_NODE_UP,
        "1 when the node's last health check passed, by ledger and node"
    );
    describe_gauge!(
        LEDGER_NODE_BREAKER_STATE,
        "Circuit breaker per node: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(
        AUTH_FAILURES_TOTAL,
        "Requests refused 401, by reason (missing or invalid token)"
    );
    describe_gauge!(
        HSM_ORPHAN_OBJECTS,
        "Token objects with no key record, found by the start-up reconcile"
    );
    describe_gauge!(
        KEYS_MISSING_OBJECTS,
        "Key records whose private key object is not on the token"
    );
    describe_counter!(
        AUDIT_CHECKPOINTS_TOTAL,
        "Audit chain heads signed in the HSM, by result (ok or error)"
    );
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        "Connections closed at accept, by the cap they hit (max_connections, max_connections_per_ip)"
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        "Config reloads on SIGHUP, by result (ok or refused)"
    );
}
