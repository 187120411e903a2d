//! The tc half's attachment: which devices get which program, and keeping that true as
//! pods (and their veths) come and go.
//!
//! * External devices (`BpfConfig::devices`, by default every device holding a
//!   non-link-local address): `kp_tc_ingress` on ingress, `kp_tc_egress` on egress.
//! * Every other non-loopback Ethernet device (pod veths): `kp_tc_from_pod` on ingress,
//!   for the replies of local backends.
//!
//! Attachment uses TCX links, pinned at `<bpffs>/kproxy/links/tc-<program>-<device>` so
//! they stay while no agent runs. A new agent updates the program inside a pinned link
//! (`BPF_LINK_UPDATE`: atomic, no packet sees an empty hook); a pin whose link died with
//! its device is replaced by a fresh link. Devices are rescanned by every full sync and by
//! partial syncs where a port gains a local endpoint (see `BpfDataplane::sync_partial`), so
//! a pod's veth has its program before the pod's endpoint can be chosen as a backend. Pins
//! of devices that are gone are removed.
//!
//! Everything runs in the network namespace the dataplane was created in, on a helper
//! thread that enters it, whichever thread calls.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::IpAddr,
    os::fd::OwnedFd,
    path::Path,
};

use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};
use kproxy_common::{TC_EXTERNAL_EGRESS, TC_EXTERNAL_INGRESS, TC_POD_INGRESS};
use nix::{
    ifaddrs::getifaddrs,
    net::if_::{InterfaceFlags, if_nametoindex},
};

use crate::{Error, loader};

/// `ARPHRD_ETHER`: the programs parse an Ethernet header.
const ARPHRD_ETHER: u16 = 1;
/// Prefix of tc link pins, telling them from the cgroup links'.
const PIN_PREFIX: &str = "tc-";

/// One interface of the namespace, as `getifaddrs` reports it.
#[derive(Debug, Default)]
struct Interface {
    ethernet: bool,
    loopback: bool,
    /// Holds an address that is neither loopback nor link-local.
    routable: bool,
}

fn interfaces() -> Result<BTreeMap<String, Interface>, Error> {
    let addrs = getifaddrs().map_err(|errno| Error::Devices {
        source: errno.into(),
    })?;
    let mut out: BTreeMap<String, Interface> = BTreeMap::new();
    for a in addrs {
        let entry = out.entry(a.interface_name).or_default();
        entry.loopback |= a.flags.contains(InterfaceFlags::IFF_LOOPBACK);
        let Some(address) = a.address else { continue };
        if let Some(link) = address.as_link_addr() {
            entry.ethernet |= link.hatype() == ARPHRD_ETHER;
        }
        let ip = address
            .as_sockaddr_in()
            .map(|s| IpAddr::from(s.ip()))
            .or_else(|| address.as_sockaddr_in6().map(|s| IpAddr::from(s.ip())));
        if let Some(ip) = ip {
            let link_local = match ip {
                IpAddr::V4(v4) => v4.is_link_local(),
                IpAddr::V6(v6) => v6.is_unicast_link_local(),
            };
            entry.routable |= !ip.is_loopback() && !link_local;
        }
    }
    Ok(out)
}

/// The default external devices: every non-loopback device with a routable address (the
/// node's addresses, hence its NodePort addresses, live on them).
pub(crate) fn default_devices() -> Result<Vec<String>, Error> {
    Ok(interfaces()?
        .into_iter()
        .filter(|(_, i)| !i.loopback && i.routable)
        .map(|(name, _)| name)
        .collect())
}

/// Runs `f` on a thread inside the network namespace `netns`.
pub(crate) fn in_netns<T: Send>(
    netns: &OwnedFd,
    f: impl FnOnce() -> Result<T, Error> + Send,
) -> Result<T, Error> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| {
                Error::Devices {
                    source: errno.into(),
                }
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Which (program, device) pairs are attached by this agent, with the device's index at
/// the time (a veth re-created under the same name gets a new index and a new link).
#[derive(Debug, Default)]
pub(crate) struct Attached {
    links: BTreeMap<(&'static str, String), u32>,
    warned_missing: BTreeSet<String>,
}

fn pin_name(program: &str, device: &str) -> String {
    format!("{PIN_PREFIX}{program}-{device}")
}

fn attach_type(program: &str) -> TcAttachType {
    if program == TC_EXTERNAL_EGRESS {
        TcAttachType::Egress
    } else {
        TcAttachType::Ingress
    }
}

/// Attaches `program` to `device`, replacing the program inside a pinned link when one
/// is still alive.
fn attach_one(
    ebpf: &mut Ebpf,
    bpffs: &Path,
    program: &'static str,
    device: &str,
) -> Result<(), Error> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(program)
        .ok_or(Error::MissingInObject { name: program })?
        .try_into()
        .map_err(|source| Error::Program {
            name: program,
            source,
        })?;
    let pin = loader::links_dir(bpffs).join(pin_name(program, device));
    if pin.exists() {
        let updated = PinnedLink::from_pin(&pin)
            .ok()
            .map(FdLink::from)
            .and_then(|l| SchedClassifierLink::try_from(l).ok())
            .map(|l| prog.attach_to_link(l));
        if let Some(Ok(id)) = updated {
            // The pin holds the link; this process's handle can go.
            let _ = prog.take_link(id);
            return Ok(());
        }
        // The link died with its device (or is no TCX link): start over.
        fs::remove_file(&pin).map_err(loader::io_error("unpinning", &pin))?;
    }
    let id = prog
        .attach(device, attach_type(program))
        .map_err(|source| Error::Program {
            name: program,
            source,
        })?;
    let link = prog.take_link(id).map_err(|source| Error::Program {
        name: program,
        source,
    })?;
    let link = FdLink::try_from(link).map_err(|source| Error::Link {
        name: program,
        source,
    })?;
    link.pin(&pin).map_err(|source| Error::Pin {
        name: program,
        source,
    })?;
    Ok(())
}

impl Attached {
    /// Brings the attachments to the namespace's current devices. Must run inside the
    /// dataplane's namespace ([`in_netns`]). A failure on an external device is an error;
    /// on a pod device (which may vanish while we look) a warning.
    pub(crate) fn refresh(
        &mut self,
        ebpf: &mut Ebpf,
        bpffs: &Path,
        external: &[String],
    ) -> Result<(), Error> {
        let interfaces = interfaces()?;
        let mut wanted: Vec<(&'static str, String)> = Vec::new();
        for device in external {
            match interfaces.get(device) {
                Some(i) if i.ethernet => {
                    wanted.push((TC_EXTERNAL_INGRESS, device.clone()));
                    wanted.push((TC_EXTERNAL_EGRESS, device.clone()));
                }
                found => {
                    if self.warned_missing.insert(device.clone()) {
                        let reason = if found.is_some() {
                            "not an Ethernet device"
                        } else {
                            "no such device"
                        };
                        tracing::warn!(
                            device,
                            reason,
                            "external device not served by the tc programs"
                        );
                    }
                }
            }
        }
        for (name, i) in &interfaces {
            if i.ethernet && !i.loopback && !external.contains(name) {
                wanted.push((TC_POD_INGRESS, name.clone()));
            }
        }

        let mut now = BTreeMap::new();
        for (program, device) in wanted {
            let Ok(index) = if_nametoindex(device.as_str()) else {
                continue;
            };
            let key = (program, device);
            if self.links.get(&key) == Some(&index) {
                now.insert(key, index);
                continue;
            }
            match attach_one(ebpf, bpffs, program, &key.1) {
                Ok(()) => {
                    tracing::debug!(program, device = key.1, "tc program attached");
                    now.insert(key, index);
                }
                Err(e) if program == TC_POD_INGRESS => {
                    tracing::warn!(
                        device = key.1,
                        error = ?e,
                        "could not attach the reply program to a pod device; replies of its backends to flows from outside are not translated"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        self.links = now;
        self.remove_stale_pins(bpffs)
    }

    /// Removes tc pins this agent does not hold: their device is gone or changed role.
    fn remove_stale_pins(&self, bpffs: &Path) -> Result<(), Error> {
        let dir = loader::links_dir(bpffs);
        let keep: BTreeSet<String> = self
            .links
            .keys()
            .map(|(program, device)| pin_name(program, device))
            .collect();
        let entries = fs::read_dir(&dir).map_err(loader::io_error("listing", &dir))?;
        for entry in entries {
            let entry = entry.map_err(loader::io_error("listing", &dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(PIN_PREFIX) && !keep.contains(&name) {
                let path = entry.path();
                fs::remove_file(&path).map_err(loader::io_error("unpinning", &path))?;
            }
        }
        Ok(())
    }
}
