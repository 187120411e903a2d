//! What changed between two models, for partial syncs and conntrack cleanup.

use std::{cmp::Ordering, collections::HashSet, net::IpAddr};

use crate::{Endpoint, ModelDiff, Protocol, ProxyModel, ServicePort, ServicePortKey};

/// Compares two models: one merge pass over the sorted keys, a full comparison only for
/// ports present in both, and endpoint sets only for UDP/SCTP ports that changed.
///
/// `stale_udp_endpoints` lists, for UDP and SCTP ports, every endpoint that some verdict of
/// `old` forwarded to and no verdict of `new` forwards to (all of them when the port went
/// away): conntrack entries still pointing there would blackhole the flow, since
/// connectionless protocols never close it.
pub fn diff(old: &ProxyModel, new: &ProxyModel) -> ModelDiff {
    let mut result = ModelDiff::default();
    let mut olds = old.ports.iter().peekable();
    let mut news = new.ports.iter().peekable();
    loop {
        let order = match (olds.peek(), news.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((old_key, _)), Some((new_key, _))) => old_key.cmp(new_key),
        };
        match order {
            Ordering::Less => {
                let (key, port) = olds.next().expect("peeked");
                result.removed.push(key.clone());
                stale_endpoints(key, port, None, &mut result.stale_udp_endpoints);
            }
            Ordering::Greater => {
                let (key, _) = news.next().expect("peeked");
                result.added.push(key.clone());
            }
            Ordering::Equal => {
                let (key, old_port) = olds.next().expect("peeked");
                let (_, new_port) = news.next().expect("peeked");
                if old_port != new_port {
                    result.updated.push(key.clone());
                    stale_endpoints(
                        key,
                        old_port,
                        Some(new_port),
                        &mut result.stale_udp_endpoints,
                    );
                }
            }
        }
    }
    result
}

/// Appends the endpoints `old` forwarded to that `new` (if any) does not.
fn stale_endpoints(
    key: &ServicePortKey,
    old: &ServicePort,
    new: Option<&ServicePort>,
    out: &mut Vec<(ServicePortKey, Endpoint)>,
) {
    if key.name.protocol == Protocol::Tcp {
        return;
    }
    let still_served: HashSet<(IpAddr, u16)> = new
        .map(|new| forwarded(new).map(|ep| (ep.ip, ep.port)).collect())
        .unwrap_or_default();
    let mut stale: Vec<&Endpoint> = forwarded(old)
        .filter(|ep| !still_served.contains(&(ep.ip, ep.port)))
        .collect();
    stale.sort_unstable_by_key(|ep| (ep.ip, ep.port));
    stale.dedup_by_key(|ep| (ep.ip, ep.port));
    out.extend(stale.into_iter().map(|ep| (key.clone(), ep.clone())));
}

/// Every endpoint any verdict of `port` forwards to (with repeats).
fn forwarded(port: &ServicePort) -> impl Iterator<Item = &Endpoint> {
    std::iter::once(&port.internal)
        .chain(
            port.external
                .iter()
                .flat_map(|ext| [&ext.verdict, &ext.cluster_verdict]),
        )
        .flat_map(move |verdict| verdict.endpoints(port))
}
