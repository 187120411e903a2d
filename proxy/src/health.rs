//! Proxier health, as kube-proxy reports it on `/healthz` and `/livez`.
//!
//! Healthy once the first sync succeeded, and unhealthy whenever an update was queued (a
//! change seen, or a periodic resync due) and has not been applied within
//! `2 × --sync-period`: kube-proxy's rule, so existing probes and alerts keep their meaning.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

#[derive(Debug, Default)]
struct Inner {
    /// When the oldest not-yet-applied update was queued.
    queued: Option<SystemTime>,
    /// When the last sync succeeded.
    updated: Option<SystemTime>,
}

/// Shared between the sync loop (writer) and the health server (reader).
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Mutex<Inner>>,
    timeout: Duration,
}

/// The JSON body of `/healthz`, field names as kube-proxy's.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HealthBody {
    /// Last successful sync (RFC 3339), or empty before the first.
    pub last_updated: String,
    /// Now (RFC 3339).
    pub current_time: String,
    /// Whether this node should receive load-balancer traffic (false while the node is
    /// being deleted or tainted for scale-down).
    pub node_eligible: bool,
}

impl Health {
    /// `sync_period` is `--sync-period`; an update pending for twice that is unhealthy.
    pub fn new(sync_period: Duration) -> Self {
        Self {
            inner: Arc::default(),
            timeout: sync_period * 2,
        }
    }

    /// An update is waiting to be applied (keeps the oldest pending time).
    pub fn queued(&self, at: SystemTime) {
        let mut inner = self.inner.lock().expect("health lock");
        inner.queued.get_or_insert(at);
    }

    /// A sync succeeded: nothing is pending any more.
    pub fn updated(&self, at: SystemTime) {
        let mut inner = self.inner.lock().expect("health lock");
        inner.updated = Some(at);
        inner.queued = None;
    }

    /// Whether the proxy is healthy at `now`, and the body to answer with.
    pub fn check(&self, now: SystemTime, node_eligible: bool) -> (bool, HealthBody) {
        let inner = self.inner.lock().expect("health lock");
        let stale = inner
            .queued
            .is_some_and(|q| now.duration_since(q).unwrap_or_default() > self.timeout);
        let healthy = inner.updated.is_some() && !stale;
        let body = HealthBody {
            last_updated: inner.updated.map(rfc3339).unwrap_or_default(),
            current_time: rfc3339(now),
            node_eligible,
        };
        (healthy, body)
    }
}

/// Formats `t` as RFC 3339 UTC with second precision, as Go's `time.Time` marshals.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_796_166_061)),
            "2026-12-01T01:01:01Z"
        );
    }

    #[test]
    fn unhealthy_until_first_sync_then_healthy_then_stale() {
        let h = Health::new(Duration::from_secs(30));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(!h.check(t0, true).0, "no sync yet");
        h.updated(t0);
        assert!(h.check(t0, true).0);
        h.queued(t0 + Duration::from_secs(1));
        assert!(
            h.check(t0 + Duration::from_secs(60), true).0,
            "pending for 59s < 60s"
        );
        assert!(
            !h.check(t0 + Duration::from_secs(62), true).0,
            "pending for 61s > 2 × 30s"
        );
        h.updated(t0 + Duration::from_secs(63));
        let (ok, body) = h.check(t0 + Duration::from_secs(64), false);
        assert!(ok);
        assert_eq!(body.last_updated, rfc3339(t0 + Duration::from_secs(63)));
        assert!(!body.node_eligible);
    }
}
