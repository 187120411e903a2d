//! Reads the pinned maps back into frontends, without loading or attaching anything:
//! `kproxy dump` uses it, so it works while no agent runs (the pins keep the datapath).
//!
//! The layout is kproxy-common's: [`MAP_SERVICES`] holds each frontend at slot 0 (flags,
//! backend count, affinity timeout) and its backend ids at slots `1..=count`;
//! [`MAP_BACKENDS`] resolves the ids. A frontend can have one entry per client scope.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::Path,
};

use aya::maps::{HashMap, Map, MapData};
use kproxy_common::{
    Addr, Backend, MAP_BACKENDS, MAP_SERVICES, SCOPE_ALL, SCOPE_NODE, SCOPE_POD, ServiceKey,
    ServiceValue,
};

use crate::{Error, loader};

/// One frontend entry of the services map (one client scope of one frontend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectedFrontend {
    /// Frontend address (IPv4 unmapped).
    pub address: IpAddr,
    /// Frontend port.
    pub port: u16,
    /// IANA protocol number.
    pub protocol: u8,
    /// Which clients the entry applies to: `all`, `node` or `pod`.
    pub scope: &'static str,
    /// `FLAG_*` of kproxy-common: kind, reject/drop, masquerade, source ranges.
    pub flags: u16,
    /// ClientIP affinity timeout (0: none).
    pub affinity_timeout_secs: u32,
    /// The entry's service id (per service port and scope).
    pub service_id: u32,
    /// The backends of slots `1..=count`, in slot order.
    pub backends: Vec<SocketAddr>,
    /// Slots whose entry or backend is missing: must be 0 (a torn update otherwise).
    pub missing_slots: u16,
}

/// What the pins under `<bpffs>/kproxy/` hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Every frontend entry, ordered by address, port, protocol and scope.
    pub frontends: Vec<InspectedFrontend>,
    /// File names of the pinned links (attached programs).
    pub links: Vec<String>,
}

fn ip(a: Addr) -> IpAddr {
    let v6 = Ipv6Addr::from(a.to_bytes());
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

fn scope_name(scope: u8) -> &'static str {
    match scope {
        SCOPE_ALL => "all",
        SCOPE_NODE => "node",
        SCOPE_POD => "pod",
        _ => "unknown",
    }
}

fn open<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, Error> {
    let err = |source| Error::Map { name, source };
    let data = MapData::from_pin(dir.join(name)).map_err(err)?;
    HashMap::try_from(Map::HashMap(data)).map_err(err)
}

/// Reads the pinned maps under `<bpffs>/kproxy/`; `None` when kproxy has pinned nothing
/// there. Changes nothing.
pub fn inspect(bpffs: &Path) -> Result<Option<Inspection>, Error> {
    let root = loader::pin_root(bpffs);
    let maps_dir = root.join("maps");
    if !maps_dir.join(MAP_SERVICES).exists() {
        return Ok(None);
    }
    let services: HashMap<MapData, ServiceKey, ServiceValue> = open(&maps_dir, MAP_SERVICES)?;
    let backends: HashMap<MapData, u32, Backend> = open(&maps_dir, MAP_BACKENDS)?;
    let iter_err = |name| move |source| Error::Map { name, source };
    let entries: BTreeMap<ServiceKey, ServiceValue> = services
        .iter()
        .collect::<Result<_, _>>()
        .map_err(iter_err(MAP_SERVICES))?;
    let backends: BTreeMap<u32, Backend> = backends
        .iter()
        .collect::<Result<_, _>>()
        .map_err(iter_err(MAP_BACKENDS))?;
    let frontends = entries
        .iter()
        .filter(|(k, _)| k.slot == 0)
        .map(|(k, v)| {
            let mut out = InspectedFrontend {
                address: ip(k.addr),
                port: u16::from_be(k.port),
                protocol: k.proto,
                scope: scope_name(k.scope),
                flags: v.flags,
                affinity_timeout_secs: v.target,
                service_id: v.service_id,
                backends: Vec::with_capacity(usize::from(v.count)),
                missing_slots: 0,
            };
            for slot in 1..=v.count {
                let backend = entries
                    .get(&ServiceKey { slot, ..*k })
                    .and_then(|s| backends.get(&s.target));
                match backend {
                    Some(b) => out
                        .backends
                        .push(SocketAddr::new(ip(b.addr), u16::from_be(b.port))),
                    None => out.missing_slots += 1,
                }
            }
            out
        })
        .collect();
    let links_dir = root.join("links");
    let mut links = Vec::new();
    if links_dir.exists() {
        let read = std::fs::read_dir(&links_dir)
            .map_err(loader::io_error("listing the pinned links in", &links_dir))?;
        for entry in read {
            let entry =
                entry.map_err(loader::io_error("listing the pinned links in", &links_dir))?;
            links.push(entry.file_name().to_string_lossy().into_owned());
        }
        links.sort();
    }
    Ok(Some(Inspection { frontends, links }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_unmap_ipv4_and_keep_ipv6() {
        let v4 = Addr::from_v4_raw(u32::from_ne_bytes([198, 51, 100, 7]));
        assert_eq!(ip(v4), "198.51.100.7".parse::<IpAddr>().unwrap());
        let v6 = Addr::from_bytes("2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(ip(v6), "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(scope_name(SCOPE_POD), "pod");
    }

    #[test]
    fn nothing_pinned_reads_as_none() {
        let dir = std::env::temp_dir().join(format!("kproxy-inspect-{}", std::process::id()));
        assert_eq!(inspect(&dir).unwrap(), None);
    }
}
