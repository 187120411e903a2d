//! Loading, pinning and attaching, and taking over from a previous agent.
//!
//! # Pins
//!
//! ```text
//! <bpffs>/kproxy/maps/<MAP>     every map of kproxy_common::MAPS, reused by the next agent
//! <bpffs>/kproxy/links/<prog>   one cgroup link per socket program: keeps it attached
//!                               while no agent runs
//! <bpffs>/kproxy/links/tc-<prog>-<device>   one TCX link per tc program and device
//!                               (see `devices`)
//! ```
//!
//! # Restart
//!
//! A new agent loads the programs against the pinned maps (so they share state with the
//! running ones), then, per hook: attaches its program next to the old one (cgroup links
//! always coexist: the kernel attaches them in multi mode), swaps the pin to the new link,
//! and closes the old link, which detaches it. Both programs see the same maps and an already-translated address is no
//! Service frontend, so during the swap each socket is translated exactly once, and at no
//! point is a hook empty.

use std::{
    fs, io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapData, MapType},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, links::FdLink, links::PinnedLink,
    },
};
use kproxy_common::{
    MAPS, MapKind, SOCK_PROGRAMS, TC_EXTERNAL_EGRESS, TC_EXTERNAL_INGRESS, TC_POD_INGRESS,
};

use crate::{Error, maps::KernelMaps, object::EBPF_OBJECT};

/// Directory of kproxy's pins inside a bpffs.
pub(crate) fn pin_root(bpffs: &Path) -> PathBuf {
    bpffs.join("kproxy")
}

fn maps_dir(bpffs: &Path) -> PathBuf {
    pin_root(bpffs).join("maps")
}

pub(crate) fn links_dir(bpffs: &Path) -> PathBuf {
    pin_root(bpffs).join("links")
}

pub(crate) fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

fn expected_type(kind: MapKind) -> MapType {
    match kind {
        MapKind::Hash => MapType::Hash,
        MapKind::LruHash => MapType::LruHash,
        MapKind::Array => MapType::Array,
        MapKind::PerCpuArray => MapType::PerCpuArray,
        MapKind::LpmTrie => MapType::LpmTrie,
    }
}

/// Refuses pins whose layout differs from this build's: reusing them would misread every
/// element. (Layout changes get new names, so this only catches foreign or corrupt pins.)
fn check_pinned_maps(bpffs: &Path) -> Result<(), Error> {
    for spec in &MAPS {
        let path = maps_dir(bpffs).join(spec.name);
        if !path.exists() {
            continue;
        }
        let map = MapData::from_pin(&path).map_err(|source| Error::Map {
            name: spec.name,
            source,
        })?;
        let info = map.info().map_err(|source| Error::Map {
            name: spec.name,
            source,
        })?;
        let found_type = info.map_type().ok();
        if found_type != Some(expected_type(spec.kind))
            || info.key_size() != spec.key_size
            || info.value_size() != spec.value_size
            || info.max_entries() != spec.max_entries
        {
            return Err(Error::IncompatiblePin {
                path,
                reason: format!(
                    "type {found_type:?}, key {} B, value {} B, {} entries; expected {:?}, {} B, {} B, {}",
                    info.key_size(),
                    info.value_size(),
                    info.max_entries(),
                    spec.kind,
                    spec.key_size,
                    spec.value_size,
                    spec.max_entries
                ),
            });
        }
    }
    Ok(())
}

/// The loaded object with its maps taken out.
pub(crate) struct Loaded {
    /// Keeps the programs' fds (the links hold the programs anyway).
    pub(crate) ebpf: Ebpf,
    pub(crate) maps: KernelMaps,
}

fn take<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, Error> {
    let map = ebpf.take_map(name).ok_or(Error::MissingInObject { name })?;
    convert(map).map_err(|source| Error::Map { name, source })
}

/// Loads the object against the pins in `bpffs` (creating missing ones), attaches every
/// socket program to `cgroup` and pins the links, replacing a previous agent's.
pub(crate) fn load_and_attach(bpffs: &Path, cgroup: &Path) -> Result<Loaded, Error> {
    for dir in [maps_dir(bpffs), links_dir(bpffs)] {
        fs::create_dir_all(&dir).map_err(io_error("creating", &dir))?;
    }
    check_pinned_maps(bpffs)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(maps_dir(bpffs))
        .load(EBPF_OBJECT)
        .map_err(|source| Error::Load {
            source: Box::new(source),
        })?;
    let cgroup_file = fs::File::open(cgroup).map_err(io_error("opening cgroup", cgroup))?;
    for name in SOCK_PROGRAMS {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(Error::MissingInObject { name })?
            .try_into()
            .map_err(|source| Error::Program { name, source })?;
        program
            .load()
            .map_err(|source| Error::Program { name, source })?;
        let link_id = program
            .attach(&cgroup_file, CgroupAttachMode::Single)
            .map_err(|source| Error::Program { name, source })?;
        let link = program
            .take_link(link_id)
            .map_err(|source| Error::Program { name, source })?;
        let link = FdLink::try_from(link).map_err(|source| Error::Link { name, source })?;
        let pin = links_dir(bpffs).join(name);
        // Hold the old link open while the pin moves, so the hook is never empty; closing
        // it afterwards detaches the old program.
        let old = if pin.exists() {
            let old = PinnedLink::from_pin(&pin).map_err(|source| Error::Link { name, source })?;
            fs::remove_file(&pin).map_err(io_error("unpinning", &pin))?;
            Some(old)
        } else {
            None
        };
        link.pin(&pin)
            .map_err(|source| Error::Pin { name, source })?;
        drop(old);
        tracing::debug!(program = name, cgroup = %cgroup.display(), fd = cgroup_file.as_raw_fd(), "attached");
    }
    // tc programs are loaded here and attached per device by `devices`.
    for name in [TC_EXTERNAL_INGRESS, TC_EXTERNAL_EGRESS, TC_POD_INGRESS] {
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(Error::MissingInObject { name })?
            .try_into()
            .map_err(|source| Error::Program { name, source })?;
        program
            .load()
            .map_err(|source| Error::Program { name, source })?;
    }
    let maps = KernelMaps {
        services: take(&mut ebpf, kproxy_common::MAP_SERVICES, TryFrom::try_from)?,
        backends: take(&mut ebpf, kproxy_common::MAP_BACKENDS, TryFrom::try_from)?,
        affinity_match: take(
            &mut ebpf,
            kproxy_common::MAP_AFFINITY_MATCH,
            TryFrom::try_from,
        )?,
        config: take(&mut ebpf, kproxy_common::MAP_CONFIG, TryFrom::try_from)?,
        counters: take(&mut ebpf, kproxy_common::MAP_COUNTERS, TryFrom::try_from)?,
        source_ranges: take(
            &mut ebpf,
            kproxy_common::MAP_SOURCE_RANGES,
            TryFrom::try_from,
        )?,
        cluster_ips: take(&mut ebpf, kproxy_common::MAP_CLUSTER_IPS, TryFrom::try_from)?,
    };
    remove_retired_map_pins(bpffs)?;
    Ok(Loaded { ebpf, maps })
}

/// Unpins maps of older layouts (`KP_*` names this build does not use, e.g.
/// `KP_SERVICES_V1` after a capacity change). Programs still running hold their own
/// references, so an old program keeps its map until it is replaced.
fn remove_retired_map_pins(bpffs: &Path) -> Result<(), Error> {
    let dir = maps_dir(bpffs);
    let entries = fs::read_dir(&dir).map_err(io_error("listing", &dir))?;
    for entry in entries {
        let path = entry.map_err(io_error("listing", &dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with("KP_") && !MAPS.iter().any(|spec| spec.name == name) {
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!(map = name, "unpinned a map of an older layout"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("unpinning", &path)(e)),
            }
        }
    }
    Ok(())
}

/// Removes every pin kproxy made under `bpffs`: links first (which detaches the programs
/// once no process holds them), then maps. Missing pins are fine.
pub(crate) fn remove_pins(bpffs: &Path) -> Result<(), Error> {
    let root = pin_root(bpffs);
    for dir in [links_dir(bpffs), maps_dir(bpffs)] {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("listing", &dir)(e)),
        };
        for entry in entries {
            let path = entry.map_err(io_error("listing", &dir))?.path();
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("unpinning", &path)(e)),
            }
        }
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("removing", &dir)(e)),
        }
    }
    match fs::remove_dir(&root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("removing", &root)(e)),
    }
}

/// Cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`), how the socket
/// programs tell the node's own sockets from pods'.
pub(crate) fn current_netns_cookie() -> Result<u64, Error> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let socket = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|errno| Error::NetnsCookie {
        source: errno.into(),
    })?;
    let mut cookie: u64 = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<u64>()).unwrap_or(8);
    // SAFETY: valid socket fd, and an out-buffer of the size passed.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(Error::NetnsCookie {
            source: io::Error::last_os_error(),
        });
    }
    Ok(cookie)
}
