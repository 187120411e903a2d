//! Names of per-service objects, readable in `nft list table ip kproxy`.
//!
//! Budget: the kernel limits chain and set names to `NFT_NAME_MAXLEN` = 256 bytes
//! including the NUL, so 255 usable. A service port's base name is
//! `<namespace>/<name>/<proto>/<port name>`: at most 63 + 1 + 63 + 1 + 4 + 1 + 63 = 196
//! bytes for valid Kubernetes names. The longest object is an affinity endpoint
//! (`ep-<base>__<ipv6>/<port>`): 3 + 196 + 2 + 39 + 1 + 5 = 246 bytes, so valid names are
//! never shortened. Names past the limit (invalid objects) are cut and suffixed with a
//! hash of the full name, which keeps them unique. IPv6 colons become dots, as upstream.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    net::IpAddr,
};

use kproxy_model::ServicePortName;

use crate::ir::Name;

/// Longest usable name.
pub(crate) const NAME_MAX: usize = 255;

/// Cuts `name` to [`NAME_MAX`] with a hash suffix when it is longer.
pub(crate) fn fit(name: String) -> Name {
    if name.len() <= NAME_MAX {
        return name.into();
    }
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    let suffix = format!("~{:016x}", h.finish());
    let mut cut = NAME_MAX - suffix.len();
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &name[..cut]).into()
}

/// `<namespace>/<name>/<proto>/<port name>`.
pub(crate) fn port_base(name: &ServicePortName) -> String {
    format!(
        "{}/{}/{}/{}",
        name.namespace,
        name.name,
        name.protocol.as_str(),
        name.port_name
    )
}

/// Chain for an affinity service's internal frontends.
pub(crate) fn service_chain(name: &ServicePortName) -> Name {
    fit(format!("svc-{}", port_base(name)))
}

/// Chain for an affinity service's external frontends.
pub(crate) fn external_chain(name: &ServicePortName) -> Name {
    fit(format!("ext-{}", port_base(name)))
}

/// Chain that picks among one endpoint list of an affinity service.
pub(crate) fn pick_chain(name: &ServicePortName, role: &str) -> Name {
    fit(format!("pick-{}/{role}", port_base(name)))
}

/// Chain (and dynamic set of the same name) of one endpoint of an affinity service.
pub(crate) fn endpoint(name: &ServicePortName, ip: IpAddr, port: u16) -> Name {
    let ip = ip.to_string().replace(':', ".");
    fit(format!("ep-{}__{ip}/{port}", port_base(name)))
}

/// Comment naming a service port, as upstream prints it (`ns/name:port/proto`).
pub(crate) fn comment(name: &ServicePortName) -> Name {
    name.to_string().into()
}

#[cfg(test)]
mod tests {
    use kproxy_model::Protocol;

    use super::*;

    fn spn(ns: &str, name: &str, port: &str) -> ServicePortName {
        ServicePortName {
            namespace: ns.into(),
            name: name.into(),
            port_name: port.into(),
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn names_are_readable() {
        let n = spn("default", "web", "http");
        assert_eq!(&*service_chain(&n), "svc-default/web/tcp/http");
        assert_eq!(&*external_chain(&n), "ext-default/web/tcp/http");
        assert_eq!(
            &*endpoint(&n, "fd00::1".parse().unwrap(), 80),
            "ep-default/web/tcp/http__fd00..1/80"
        );
    }

    #[test]
    fn longest_valid_names_fit_and_overlong_names_stay_unique() {
        let n = spn(&"a".repeat(63), &"b".repeat(63), &"c".repeat(63));
        let ip: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        let e = endpoint(&n, ip, 65535);
        assert!(e.len() <= NAME_MAX);
        assert!(!e.contains('~'), "a valid name must not be shortened: {e}");
        let long1 = fit("x".repeat(300) + "1");
        let long2 = fit("x".repeat(300) + "2");
        assert_eq!(long1.len(), NAME_MAX);
        assert_ne!(long1, long2);
    }
}
