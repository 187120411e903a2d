//! Batched map syscalls (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_LOOKUP_BATCH`), which aya 0.14
//! does not expose: one `bpf()` call writes or reads thousands of elements instead of one,
//! which is most of a full sync's cost at 100k services.
//!
//! The only `unsafe` of the crate's map access is here: the raw syscall, whose pointers
//! always come from live slices of the map's key and value types (sizes checked by aya
//! when the typed map was made).

use std::{
    io,
    mem::{MaybeUninit, size_of},
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{HashMap, IterableMap as _, MapData},
};

/// `enum bpf_cmd` values (linux/bpf.h, stable ABI since 5.6).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Elements asked for per `BPF_MAP_LOOKUP_BATCH` call: large enough that a dump of 2M
/// elements takes a few hundred calls, small enough for modest buffers. A hash bucket
/// never holds nearly this many, so `ENOSPC` (bucket larger than the batch) is handled
/// but not expected.
const LOOKUP_CHUNK: u32 = 16_384;

/// Elements per `BPF_MAP_UPDATE_BATCH` call. The kernel has no limit, but a bounded
/// chunk keeps each call's time (it holds no lock across elements) and the `count` it
/// reports on failure small and simple.
const UPDATE_CHUNK: usize = 65_536;

/// A position token no hash map returns (a bucket index is below the bucket count).
const NO_TOKEN: u32 = u32::MAX;

/// The `batch` member of `union bpf_attr` (linux/bpf.h):
/// `{ __aligned_u64 in_batch, out_batch, keys, values; __u32 count, map_fd; __u64 elem_flags, flags; }`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: elements offered (update) or room for (lookup). Out: elements done, also on
    /// error.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A batch call that stopped early.
#[derive(Debug, thiserror::Error)]
#[error("{call} stopped after {done} elements")]
pub(crate) struct BatchError {
    /// The command that failed.
    pub(crate) call: &'static str,
    /// Leading elements the kernel did apply before failing: exactly these are in the map.
    pub(crate) done: usize,
    /// The kernel's answer.
    #[source]
    pub(crate) source: io::Error,
}

fn sys_bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid, exclusively borrowed `bpf_attr.batch`; every pointer in
    // it is set by the callers below from slices that outlive this call and hold at least
    // `count` elements of the map's key and value sizes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn raw_fd<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> u32 {
    let fd = map.map().fd().as_fd().as_raw_fd();
    u32::try_from(fd).expect("an open fd is not negative")
}

/// Writes `keys[i]` → `values[i]` (`BPF_ANY`), in order. On failure, exactly the first
/// `done` elements were written.
pub(crate) fn update<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let map_fd = raw_fd(map);
    let mut done = 0;
    for (keys, values) in keys.chunks(UPDATE_CHUNK).zip(values.chunks(UPDATE_CHUNK)) {
        let count = u32::try_from(keys.len()).expect("chunk fits u32");
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count,
            map_fd,
            ..BatchAttr::default()
        };
        if let Err(source) = sys_bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
            // An element that fails stops the batch and the kernel reports how many it
            // applied (always fewer than offered). A call refused before the first
            // element leaves `count` as it was: none applied.
            if attr.count < count {
                done += attr.count as usize;
            }
            return Err(BatchError {
                call: "BPF_MAP_UPDATE_BATCH",
                done,
                source,
            });
        }
        done += keys.len();
    }
    Ok(())
}

/// Every element of a hash map, read `LOOKUP_CHUNK` at a time. Elements added or removed
/// during the dump may or may not be seen (as with key iteration); each bucket is read
/// whole, so no element present throughout is missed or repeated.
pub(crate) fn dump<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
) -> Result<Vec<(K, V)>, BatchError> {
    let map_fd = raw_fd(map);
    let mut out = Vec::new();
    let mut chunk = LOOKUP_CHUNK as usize;
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    // The position token of a hash map is a bucket index, a `u32`.
    let mut position: u32 = 0;
    let mut next: u32;
    let mut first = true;
    loop {
        keys.resize_with(chunk, MaybeUninit::uninit);
        // The kernel writes the token and the count together; a token still at this
        // value after `ENOENT` means it wrote neither (nothing was read).
        next = NO_TOKEN;
        values.resize_with(chunk, MaybeUninit::uninit);
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                std::ptr::from_mut(&mut position) as u64
            },
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(chunk).expect("chunk fits u32"),
            map_fd,
            ..BatchAttr::default()
        };
        let result = sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let mut got = (attr.count as usize).min(chunk);
        let end = match result {
            Ok(()) => false,
            // The whole map has been read; `got` may still hold its last elements.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if next == NO_TOKEN {
                    got = 0;
                }
                true
            }
            // A bucket holds more than `chunk` elements: nothing was read, ask for more.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                chunk *= 2;
                continue;
            }
            Err(source) => {
                return Err(BatchError {
                    call: "BPF_MAP_LOOKUP_BATCH",
                    done: out.len(),
                    source,
                });
            }
        };
        out.extend(keys[..got].iter().zip(&values[..got]).map(|(k, v)| {
            // SAFETY: the kernel wrote `got` whole keys and values (their sizes are the
            // map's, checked by aya), and `K`/`V` are `Pod`: any bytes are valid.
            unsafe { (k.assume_init(), v.assume_init()) }
        }));
        if end {
            return Ok(out);
        }
        position = next;
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use aya::{EbpfLoader, maps::HashMap};
    use kproxy_common::{Addr, Backend, CLUSTER_IPS_MAX, MAP_BACKENDS, MAP_CLUSTER_IPS};
    use kproxy_tests::lab::Lab;

    use super::{dump, update};
    use crate::object::EBPF_OBJECT;

    fn backend(i: u32) -> Backend {
        Backend {
            addr: Addr {
                words: [0, 0, 0, i.to_be()],
            },
            port: u16::try_from(i % 65_536).expect("fits").to_be(),
            proto: 6,
            pad: 0,
        }
    }

    /// Writes and reads the real backends map (a fresh one, pinned in a lab node's own
    /// bpffs) in several chunks each way, and checks a batch the kernel stops part way.
    #[test]
    #[ignore = "needs root: run through cargo xtask test"]
    fn batches_write_and_read_back_a_real_map() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test creates BPF maps in a lab node: run it as root (cargo xtask test)"
        );
        let lab = Lab::new("bpf-batch").expect("lab");
        let node = lab.add_node("a").expect("node");
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(node.bpffs_path())
            .load(EBPF_OBJECT)
            .expect("load the object");
        let map: HashMap<_, u32, Backend> =
            HashMap::try_from(ebpf.take_map(MAP_BACKENDS).expect("backends map"))
                .expect("typed map");

        assert!(dump(&map).expect("dump an empty map").is_empty());

        // More than one update chunk and many lookup chunks.
        let n = 70_000;
        let ids: Vec<u32> = (1..=n).collect();
        let values: Vec<Backend> = ids.iter().map(|i| backend(*i)).collect();
        update(&map, &ids, &values).expect("batch update");

        let written: BTreeMap<u32, Backend> = ids.iter().copied().zip(values).collect();
        let read: Vec<(u32, Backend)> = dump(&map).expect("batch lookup");
        assert_eq!(read.len(), written.len(), "no element missed or repeated");
        assert_eq!(read.into_iter().collect::<BTreeMap<_, _>>(), written);
        // The same content through the kernel's one-element calls.
        let single: BTreeMap<u32, Backend> = map
            .iter()
            .collect::<Result<_, _>>()
            .expect("per-element dump");
        assert_eq!(single, written);

        // Overwrites are in place.
        let changed: Vec<Backend> = ids[..100].iter().map(|i| backend(i + n)).collect();
        update(&map, &ids[..100], &changed).expect("batch overwrite");
        assert_eq!(map.get(&1, 0).expect("lookup"), backend(1 + n));

        // A batch the kernel stops part way (the map is full: E2BIG), in its last chunk,
        // reports exactly what it wrote, and exactly that is in the map.
        let ips: HashMap<_, Addr, u32> =
            HashMap::try_from(ebpf.take_map(MAP_CLUSTER_IPS).expect("ClusterIP map"))
                .expect("typed map");
        let keys: Vec<Addr> = (0..CLUSTER_IPS_MAX + 5)
            .map(|i| Addr {
                words: [i, 0, 0, 0],
            })
            .collect();
        let ones = vec![1; keys.len()];
        let e = update(&ips, &keys, &ones).expect_err("more than the map holds");
        assert_eq!(e.source.raw_os_error(), Some(libc::E2BIG), "{e}");
        assert_eq!(e.done, CLUSTER_IPS_MAX as usize);
        let read: BTreeSet<Addr> = dump(&ips)
            .expect("dump")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(read, keys[..e.done].iter().copied().collect());
    }
}
