//! Proxier health, as kube-proxy reports it on `/healthz` and `/livez`.
//!
//! Healthy once the first sync succeeded, and unhealthy whenever an update was queued (a
//! change seen, or a periodic resync due) and has not been applied within
//! `2 × --sync-period`: kube-proxy's rule, so existing probes and alerts keep their meaning.
//! `/healthz` is also 503 while this node is not eligible for load-balancer traffic (its
//! Node is being deleted or is tainted `ToBeDeletedByClusterAutoscaler`), so cloud load
//! balancers drain it before it goes; `/livez` ignores the node, so the pod is not
//! restarted for it.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use kproxy_model::NodeInfo;
use serde::Serialize;

/// The taint the cluster autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

#[derive(Debug)]
struct Inner {
    /// When the oldest not-yet-applied update was queued.
    queued: Option<SystemTime>,
    /// When the last sync succeeded.
    updated: Option<SystemTime>,
    /// Whether this node should receive load-balancer traffic, from the last snapshot.
    node_eligible: bool,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            queued: None,
            updated: None,
            // Until a Node is seen: a manifests directory may have none, and an agent
            // that has not synced is unhealthy anyway.
            node_eligible: true,
        }
    }
}

/// Which endpoint is asking: they differ only in whether node eligibility counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `/healthz`: proxier health and node eligibility (load balancers read it).
    Healthz,
    /// `/livez`: proxier health only (the kubelet's liveness probe reads it).
    Livez,
}

/// Whether a node should receive load-balancer traffic: not when it is being deleted or
/// the cluster autoscaler has tainted it for deletion. An unknown Node (None) is eligible:
/// kproxy runs without one (a manifests directory may have none), and the source already
/// warns about a missing Node.
pub fn node_eligible(node: Option<&NodeInfo>) -> bool {
    node.is_none_or(|node| !node.deleting() && !node.has_taint(TO_BE_DELETED_TAINT))
}

/// Shared between the sync loop (writer) and the health server (reader).
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Mutex<Inner>>,
    timeout: Duration,
}

/// The JSON body of `/healthz` and `/livez`, field names as kube-proxy's.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HealthBody {
    /// Last successful sync (RFC 3339), or empty before the first. Now when healthy: kube-proxy
    /// answers so for compatibility with probes that compare it with the current time.
    pub last_updated: String,
    /// Now (RFC 3339).
    pub current_time: String,
    /// `/healthz` only: whether this node should receive load-balancer traffic (false while
    /// the node is being deleted or tainted for scale-down).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_eligible: Option<bool>,
    /// The proxier's own health (without node eligibility).
    pub healthy: bool,
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

    /// Records whether this node is eligible for load-balancer traffic (see
    /// [`node_eligible`]); the sync loop calls it with every snapshot.
    pub fn set_node_eligible(&self, eligible: bool) {
        self.inner.lock().expect("health lock").node_eligible = eligible;
    }

    /// The proxier's health at `now`: synced at least once and no update waiting too long.
    /// healthCheckNodePort answers report it as `serviceProxyHealthy`.
    pub fn healthy(&self, now: SystemTime) -> bool {
        let inner = self.inner.lock().expect("health lock");
        Self::healthy_locked(&inner, now, self.timeout)
    }

    fn healthy_locked(inner: &Inner, now: SystemTime, timeout: Duration) -> bool {
        let stale = inner
            .queued
            .is_some_and(|q| now.duration_since(q).unwrap_or_default() > timeout);
        inner.updated.is_some() && !stale
    }

    /// What `probe` answers at `now`: 200 (true) or 503, and the body.
    pub fn check(&self, now: SystemTime, probe: Probe) -> (bool, HealthBody) {
        let inner = self.inner.lock().expect("health lock");
        let healthy = Self::healthy_locked(&inner, now, self.timeout);
        let node_eligible = (probe == Probe::Healthz).then_some(inner.node_eligible);
        let ok = healthy && node_eligible != Some(false);
        let last_updated = if ok { Some(now) } else { inner.updated };
        let body = HealthBody {
            last_updated: last_updated.map(rfc3339).unwrap_or_default(),
            current_time: rfc3339(now),
            node_eligible,
            healthy,
        };
        (ok, body)
    }
}

/// Parses an RFC 3339 timestamp (`2006-01-02T15:04:05Z`, optional fraction, `Z` or
/// `±hh:mm`), as Kubernetes writes them in annotations; None when malformed.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let (date, rest) = text.split_once(['T', 't'])?;
    let mut ymd = date.splitn(3, '-');
    let year: i64 = ymd.next()?.parse().ok()?;
    let month: i64 = ymd.next()?.parse().ok()?;
    let day: i64 = ymd.next()?.parse().ok()?;
    let (clock, offset_secs) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0i64)
    } else {
        let pos = rest.rfind(['+', '-'])?;
        let (c, offset) = rest.split_at(pos);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (oh, om) = offset[1..].split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut parts = hms.splitn(3, ':');
    let hour: i64 = parts.next()?.parse().ok()?;
    let minute: i64 = parts.next()?.parse().ok()?;
    let second: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = &frac[..frac.len().min(9)];
        digits.parse::<u32>().ok()? * 10u32.pow(u32::try_from(9 - digits.len()).ok()?)
    };
    // Days-from-civil (Howard Hinnant's algorithm), the inverse of `rfc3339`.
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let yoe = shifted_year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
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
            rfc3339(UNIX_EPOCH + Duration::from_hours(264_384)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_796_086_861)),
            "2026-12-01T01:01:01Z"
        );
    }

    #[test]
    fn rfc3339_parses_what_kubernetes_writes() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_086_861);
        assert_eq!(parse_rfc3339("2026-12-01T01:01:01Z"), Some(t));
        assert_eq!(
            parse_rfc3339(&rfc3339(UNIX_EPOCH + Duration::from_hours(264_384))),
            Some(UNIX_EPOCH + Duration::from_hours(264_384))
        );
        assert_eq!(
            parse_rfc3339("2026-12-01T02:01:01.25+01:00"),
            Some(t + Duration::from_millis(250))
        );
        assert_eq!(
            parse_rfc3339("2026-12-01T01:01:01.000000001Z"),
            Some(t + Duration::from_nanos(1))
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-13-01T01:01:01Z"), None);
    }

    #[test]
    fn unhealthy_until_first_sync_then_healthy_then_stale() {
        let h = Health::new(Duration::from_secs(30));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (ok, body) = h.check(t0, Probe::Healthz);
        assert!(!ok, "no sync yet");
        assert_eq!(body.last_updated, "");
        assert!(!body.healthy);
        h.updated(t0);
        assert!(h.check(t0, Probe::Healthz).0);
        h.queued(t0 + Duration::from_secs(1));
        assert!(
            h.check(t0 + Duration::from_mins(1), Probe::Healthz).0,
            "pending for 59s < 60s"
        );
        let (ok, body) = h.check(t0 + Duration::from_secs(62), Probe::Livez);
        assert!(!ok, "pending for 61s > 2 × 30s");
        assert_eq!(
            body.last_updated,
            rfc3339(t0),
            "the last sync, when unhealthy"
        );
        h.updated(t0 + Duration::from_secs(63));
        let (ok, body) = h.check(t0 + Duration::from_secs(64), Probe::Healthz);
        assert!(ok);
        assert_eq!(
            body.last_updated,
            rfc3339(t0 + Duration::from_secs(64)),
            "now, when healthy (kube-proxy's compatibility rule)"
        );
        assert_eq!(body.node_eligible, Some(true));
    }

    #[test]
    fn node_eligibility_fails_healthz_only() {
        let h = Health::new(Duration::from_secs(30));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        h.updated(t0);
        h.set_node_eligible(false);
        let (ok, body) = h.check(t0, Probe::Healthz);
        assert!(!ok);
        assert_eq!(body.node_eligible, Some(false));
        assert!(body.healthy);
        let (ok, body) = h.check(t0, Probe::Livez);
        assert!(ok, "livez ignores the node");
        assert_eq!(body.node_eligible, None);
        let json = serde_json::to_string(&body).unwrap();
        assert!(!json.contains("nodeEligible"), "{json}");
    }

    #[test]
    fn deleted_or_autoscaler_tainted_nodes_are_not_eligible() {
        let node = |yaml: &str| {
            let node: k8s_openapi::api::core::v1::Node = serde_json::from_str(yaml).unwrap();
            NodeInfo::from_k8s(&node)
        };
        assert!(node_eligible(None));
        assert!(node_eligible(Some(&node(r#"{"metadata":{"name":"n"}}"#))));
        assert!(node_eligible(Some(&node(
            r#"{"metadata":{"name":"n"},"spec":{"taints":[{"key":"other","effect":"NoSchedule"}]}}"#
        ))));
        assert!(!node_eligible(Some(&node(
            r#"{"metadata":{"name":"n"},"spec":{"taints":[{"key":"ToBeDeletedByClusterAutoscaler","value":"1700000000","effect":"NoSchedule"}]}}"#
        ))));
        assert!(!node_eligible(Some(&node(
            r#"{"metadata":{"name":"n","deletionTimestamp":"2026-01-01T00:00:00Z"}}"#
        ))));
    }
}
