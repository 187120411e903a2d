//! The kernel-facing backend: sends encoded transactions over an `NETLINK_NETFILTER`
//! socket and reads tables back. The only module (with `conntrack`) that makes syscalls.
//!
//! A whole transaction goes out in ONE `send`, inside one nfnetlink batch, so the kernel
//! commits all of it or none of it. The send buffer is forced to the batch size
//! (`SO_SNDBUFFORCE`), and only the last message asks for an ACK: the kernel always
//! reports failures, so a successful 1M-message batch produces one reply instead of 1M
//! (which would overflow any receive buffer). nfnetlink processes a batch synchronously
//! inside `sendmsg`, so every reply is queued by the time `send` returns.

use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::{
    Backend, TableDump,
    error::Error,
    ir::{Family, Transaction},
    layout::TABLE,
    wire::{self, BatchEncoder, MsgType, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_HDRLEN},
};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
/// Replies are small (acks, errors, dump pages); a dump page is at most this big.
const RECV_BUF: usize = 1 << 20;

/// A raw netlink socket.
#[derive(Debug)]
pub(crate) struct Socket {
    fd: OwnedFd,
    name: &'static str,
    sndbuf: usize,
}

impl Socket {
    /// Opens a socket of `protocol` in the calling thread's network namespace.
    pub(crate) fn open(protocol: libc::c_int, name: &'static str) -> Result<Self, Error> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(Error::syscall("socket", name));
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sock = Self {
            fd,
            name,
            sndbuf: 0,
        };
        // Errors without the echoed request (a failing 64 KiB element message would
        // otherwise come back whole), but with the kernel's explanation.
        sock.setsockopt(libc::SOL_NETLINK, NETLINK_CAP_ACK, 1)?;
        sock.setsockopt(libc::SOL_NETLINK, NETLINK_EXT_ACK, 1)?;
        sock.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)?;
        Ok(sock)
    }

    fn setsockopt(
        &self,
        level: libc::c_int,
        opt: libc::c_int,
        val: libc::c_int,
    ) -> Result<(), Error> {
        // SAFETY: val outlives the call and the length matches its type.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                opt,
                (&raw const val).cast(),
                libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("4"),
            )
        };
        if rc < 0 {
            return Err(Error::syscall("setsockopt", self.name));
        }
        Ok(())
    }

    /// Sends one datagram, growing the send buffer first so a big batch fits.
    pub(crate) fn send(&mut self, buf: &[u8]) -> Result<(), Error> {
        let need = buf.len() + (64 << 10);
        if need > self.sndbuf {
            let val = libc::c_int::try_from(need).map_err(|_| Error::Syscall {
                call: "sendmsg",
                socket: self.name,
                source: io::Error::from_raw_os_error(libc::EMSGSIZE),
            })?;
            self.setsockopt(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, val)?;
            self.sndbuf = need;
        }
        // SAFETY: buf is valid for buf.len() bytes for the duration of the call.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
        if rc < 0 {
            return Err(Error::syscall("sendmsg", self.name));
        }
        Ok(())
    }

    /// Receives one datagram into `buf`. `Ok(None)` when nothing is queued and `wait` is
    /// false.
    pub(crate) fn recv(&self, buf: &mut [u8], wait: bool) -> Result<Option<usize>, io::Error> {
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        loop {
            // SAFETY: buf is valid and writable for buf.len() bytes.
            let rc = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            if rc >= 0 {
                return Ok(Some(usize::try_from(rc).expect("non-negative")));
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) => return Ok(None),
                _ => return Err(err),
            }
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }
}

/// One netlink message of a datagram.
#[derive(Debug)]
pub(crate) struct Msg<'a> {
    pub(crate) kind: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
    pub(crate) payload: &'a [u8],
}

/// The messages of a datagram; stops at the first malformed header.
pub(crate) fn messages(mut buf: &[u8]) -> impl Iterator<Item = Msg<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let msg = Msg {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes(buf[8..12].try_into().ok()?),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some(msg)
    })
}

/// The attributes in `buf` as (type without flag bits, payload).
pub(crate) fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((kind, payload))
    })
}

fn attr_str(payload: &[u8]) -> &str {
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(payload.len());
    std::str::from_utf8(&payload[..end]).unwrap_or("")
}

/// A decoded `NLMSG_ERROR`: errno 0 is an ACK.
struct ErrMsg {
    errno: i32,
    seq: u32,
    message: Option<String>,
}

fn parse_error(msg: &Msg<'_>) -> Result<ErrMsg, Error> {
    let p = msg.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return Err(Error::Malformed {
            reason: "short error message",
        });
    }
    let errno = -i32::from_ne_bytes(p[0..4].try_into().expect("4 bytes"));
    let seq = u32::from_ne_bytes(p[12..16].try_into().expect("4 bytes"));
    let mut message = None;
    if msg.flags & NLM_F_ACK_TLVS != 0 {
        // With NETLINK_CAP_ACK only the original header is echoed; TLVs follow it.
        let orig_len = u32::from_ne_bytes(p[4..8].try_into().expect("4 bytes")) as usize;
        let skip = if msg.flags & 0x100 != 0 {
            NLMSG_HDRLEN
        } else {
            orig_len
        };
        if let Some(tlvs) = p.get(4 + skip..) {
            message = attrs(tlvs)
                .find(|(k, _)| *k == NLMSGERR_ATTR_MSG)
                .map(|(_, v)| attr_str(v).to_owned());
        }
    }
    Ok(ErrMsg {
        errno,
        seq,
        message,
    })
}

/// The real backend.
#[derive(Debug)]
pub(crate) struct NetlinkBackend {
    sock: Socket,
    seq: u32,
    rbuf: Vec<u8>,
    /// Time the last `apply` spent in `send` and reading replies.
    kernel_time: std::time::Duration,
}

impl NetlinkBackend {
    /// Opens the nf_tables socket in the calling thread's network namespace.
    pub(crate) fn open() -> Result<Self, Error> {
        Ok(Self {
            sock: Socket::open(libc::NETLINK_NETFILTER, "nf_tables")?,
            seq: 1,
            rbuf: vec![0; RECV_BUF],
            kernel_time: std::time::Duration::ZERO,
        })
    }

    fn next_seq(&mut self, n: usize) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(u32::try_from(n).unwrap_or(u32::MAX));
        s
    }

    /// Reads every queued reply to a batch and turns them into a verdict.
    fn collect_acks(
        &mut self,
        tx: &Transaction,
        seq_to_op: &[usize],
        first_seq: u32,
        last_seq: u32,
    ) -> Result<(), Error> {
        let mut first_err = None;
        let mut acked = false;
        loop {
            let n = match self.sock.recv(&mut self.rbuf, false) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    first_err.get_or_insert(Error::NoAck {
                        reason: "error replies overflowed the receive buffer",
                    });
                    continue;
                }
                Err(source) => {
                    return Err(Error::Syscall {
                        call: "recvmsg",
                        socket: self.sock.name(),
                        source,
                    });
                }
            };
            for msg in messages(&self.rbuf[..n]) {
                if msg.kind != NLMSG_ERROR {
                    continue;
                }
                let err = parse_error(&msg)?;
                if err.seq == last_seq {
                    acked = true;
                }
                if err.errno != 0 && first_err.is_none() {
                    let idx = err.seq.wrapping_sub(first_seq) as usize;
                    let op = match seq_to_op.get(idx) {
                        Some(&i) if i < tx.ops.len() => tx.ops[i].describe(),
                        _ => "commit of the transaction".to_owned(),
                    };
                    first_err = Some(Error::Rejected {
                        op,
                        message: err.message,
                        source: io::Error::from_raw_os_error(err.errno),
                    });
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None if !acked => Err(Error::NoAck {
                reason: "no reply to the last message",
            }),
            None => Ok(()),
        }
    }

    /// Sends a dump request and calls `on_msg` with every reply message's attributes.
    pub(crate) fn dump(
        &mut self,
        kind: MsgType,
        family: Family,
        attrs_of: &[(u16, &str)],
        mut on_msg: impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        let seq = self.next_seq(1);
        let mut writer = wire::Writer::default();
        let start = writer.begin_msg(
            kind.nlmsg_type(),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family.nfproto(),
            0,
        );
        for (k, v) in attrs_of {
            writer.attr_str(*k, v);
        }
        writer.end_msg(start);
        self.sock.send(&writer.buf)?;
        loop {
            let n = self
                .sock
                .recv(&mut self.rbuf, true)
                .map_err(|source| Error::Syscall {
                    call: "recvmsg",
                    socket: "nf_tables",
                    source,
                })?
                .ok_or(Error::Malformed {
                    reason: "dump ended early",
                })?;
            for msg in messages(&self.rbuf[..n]) {
                if msg.seq != seq {
                    continue;
                }
                match msg.kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let err = parse_error(&msg)?;
                        if err.errno != 0 {
                            return Err(Error::Rejected {
                                op: format!("dump {kind:?} {}", family.as_str()),
                                message: err.message,
                                source: io::Error::from_raw_os_error(err.errno),
                            });
                        }
                    }
                    // 4 bytes of nfgenmsg precede the attributes.
                    _ => on_msg(msg.payload.get(4..).unwrap_or_default()),
                }
            }
        }
    }

    /// True when kproxy's table exists in `family`.
    pub(crate) fn table_exists(&mut self, family: Family) -> Result<bool, Error> {
        let seq = self.next_seq(1);
        let mut w = wire::Writer::default();
        let m = w.begin_msg(
            MsgType::GetTable.nlmsg_type(),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            family.nfproto(),
            0,
        );
        w.attr_str(wire::NFTA_TABLE_NAME, TABLE);
        w.end_msg(m);
        self.sock.send(&w.buf)?;
        loop {
            let n = self
                .sock
                .recv(&mut self.rbuf, true)
                .map_err(|source| Error::Syscall {
                    call: "recvmsg",
                    socket: "nf_tables",
                    source,
                })?
                .ok_or(Error::Malformed {
                    reason: "no reply to get table",
                })?;
            for msg in messages(&self.rbuf[..n]) {
                if msg.seq == seq && msg.kind == NLMSG_ERROR {
                    let err = parse_error(&msg)?;
                    return match err.errno {
                        0 => Ok(true),
                        libc::ENOENT => Ok(false),
                        errno => Err(Error::Rejected {
                            op: format!("get table {}", family.as_str()),
                            message: err.message,
                            source: io::Error::from_raw_os_error(errno),
                        }),
                    };
                }
            }
        }
    }
}

fn table_and_name(payload: &[u8], table_attr: u16, name_attr: u16) -> (String, String) {
    let (mut table, mut name) = (String::new(), String::new());
    for (k, v) in attrs(payload) {
        if k == table_attr {
            attr_str(v).clone_into(&mut table);
        } else if k == name_attr {
            attr_str(v).clone_into(&mut name);
        }
    }
    (table, name)
}

impl Backend for NetlinkBackend {
    fn apply(&mut self, tx: &Transaction) -> Result<(), Error> {
        self.kernel_time = std::time::Duration::ZERO;
        if tx.is_empty() {
            return Ok(());
        }
        let mut enc = BatchEncoder::for_tx(self.seq, tx);
        for (i, op) in tx.ops.iter().enumerate() {
            enc.op(i, op);
        }
        let first_seq = enc.first_seq;
        let (buf, seq_to_op, last_seq) = enc.finish();
        self.next_seq(seq_to_op.len() + 1);
        // Drop stale replies (none expected) so they cannot be mistaken for ours.
        while let Ok(Some(_)) = self.sock.recv(&mut self.rbuf, false) {}
        let start = std::time::Instant::now();
        let sent = self.sock.send(&buf);
        let result = sent.and_then(|()| self.collect_acks(tx, &seq_to_op, first_seq, last_seq));
        self.kernel_time = start.elapsed();
        result
    }

    fn last_kernel_time(&self) -> std::time::Duration {
        self.kernel_time
    }

    fn list(&mut self, family: Family) -> Result<Option<TableDump>, Error> {
        if !self.table_exists(family)? {
            return Ok(None);
        }
        let mut dump = TableDump::default();
        let mut chains = BTreeMap::new();
        self.dump(MsgType::GetChain, family, &[], |p| {
            let (table, name) = table_and_name(p, wire::NFTA_CHAIN_TABLE, wire::NFTA_CHAIN_NAME);
            if table == TABLE {
                chains.insert(name, 0usize);
            }
        })?;
        self.dump(MsgType::GetRule, family, &[], |p| {
            let (table, chain) = table_and_name(p, wire::NFTA_RULE_TABLE, wire::NFTA_RULE_CHAIN);
            if table == TABLE {
                *chains.entry(chain).or_default() += 1;
            }
        })?;
        dump.chains = chains;
        let mut sets = Vec::new();
        self.dump(MsgType::GetSet, family, &[], |p| {
            let (table, name) = table_and_name(p, wire::NFTA_SET_TABLE, wire::NFTA_SET_NAME);
            if table == TABLE {
                sets.push(name);
            }
        })?;
        for set in sets {
            let mut count = 0usize;
            let req = [
                (wire::NFTA_SET_ELEM_LIST_TABLE, TABLE),
                (wire::NFTA_SET_ELEM_LIST_SET, set.as_str()),
            ];
            self.dump(MsgType::GetSetElem, family, &req, |p| {
                for (k, v) in attrs(p) {
                    if k == wire::NFTA_SET_ELEM_LIST_ELEMENTS {
                        count += attrs(v).count();
                    }
                }
            })?;
            dump.sets.insert(set, count);
        }
        Ok(Some(dump))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_iteration_strips_flags_and_respects_padding() {
        let mut w = wire::Writer::default();
        w.attr_str(1, "abc"); // 4 + 4 bytes, no padding
        w.attr(2, &[1, 2, 3, 4, 5]); // 9 bytes, padded to 12
        w.attr(0x8003, &[]); // nested flag stripped
        let got: Vec<(u16, Vec<u8>)> = attrs(&w.buf).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (1, b"abc\0".to_vec()),
                (2, vec![1, 2, 3, 4, 5]),
                (3, vec![])
            ]
        );
    }

    #[test]
    fn error_messages_carry_errno_seq_and_extack_text() {
        let mut buf = Vec::new();
        // nlmsghdr of the error itself
        let mut payload = Vec::new();
        payload.extend_from_slice(&(-2i32).to_ne_bytes());
        // echoed header: len 32, type, flags, seq 77, pid
        payload.extend_from_slice(&32u32.to_ne_bytes());
        payload.extend_from_slice(&[0; 4]);
        payload.extend_from_slice(&77u32.to_ne_bytes());
        payload.extend_from_slice(&[0; 4]);
        let mut w = wire::Writer::default();
        w.attr_str(NLMSGERR_ATTR_MSG, "no such chain");
        payload.extend_from_slice(&w.buf);
        let len = u32::try_from(16 + payload.len()).unwrap();
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_ACK_TLVS | 0x100).to_ne_bytes());
        buf.extend_from_slice(&5u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&payload);
        let msg = messages(&buf).next().unwrap();
        let err = parse_error(&msg).unwrap();
        assert_eq!(err.errno, 2);
        assert_eq!(err.seq, 77);
        assert_eq!(err.message.as_deref(), Some("no such chain"));
    }
}
