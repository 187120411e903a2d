//! Errors of the nftables dataplane.

use std::io;

/// Why a sync, a cleanup or a read-back failed. After any sync error the kernel still holds
/// the previous ruleset (transactions are atomic); the caller retries with a full sync.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A syscall on a netlink socket failed.
    #[error("{call} on the {socket} netlink socket failed")]
    Syscall {
        /// The failing call.
        call: &'static str,
        /// `nf_tables` or `conntrack`.
        socket: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused one operation of a transaction, so none was applied.
    #[error("the kernel rejected `{op}`{}", detail(.message.as_deref()))]
    Rejected {
        /// The operation (object kind and name) the kernel reported.
        op: String,
        /// The kernel's extended-ack message, when it gave one.
        message: Option<String>,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The kernel answered without acknowledging the end of the transaction (replies
    /// overflowed or were cut short); treat the transaction as failed.
    #[error("the kernel did not acknowledge the transaction ({reason})")]
    NoAck {
        /// What was missing.
        reason: &'static str,
    },
    /// A reply could not be parsed.
    #[error("malformed netlink reply: {reason}")]
    Malformed {
        /// What was wrong.
        reason: &'static str,
    },
    /// A partial sync was asked for before any full sync, or after a failure.
    #[error("partial sync needs a successful full sync first")]
    NeedFullSync,
}

fn detail(message: Option<&str>) -> String {
    message.map(|m| format!(": {m}")).unwrap_or_default()
}

impl Error {
    pub(crate) fn syscall(call: &'static str, socket: &'static str) -> Self {
        Self::Syscall {
            call,
            socket,
            source: io::Error::last_os_error(),
        }
    }
}
