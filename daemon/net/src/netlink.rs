//! The rtnetlink connection the appliers share with their helpers: one socket and the
//! current-thread runtime that drives it, opened on an applier's first call and kept
//! for its life (a change used to build a runtime and open a socket per call).
//!
//! A netlink socket belongs to the network namespace of the thread that opens it, and
//! the appliers are synchronous and may run on a thread that has `setns`-ed into another
//! namespace (the tests do). So a session is opened lazily, on the first call, in that
//! call's namespace, and an applier must keep being called from that namespace: the
//! daemon calls its appliers from its own; the tests make one applier per namespace.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use futures::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::LinkUnspec;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};

use super::NetError;

/// An open connection: the runtime whose task drives the socket, and a handle to it.
struct Open {
    /// Always `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
    handle: Handle,
}

/// A netlink connection opened on first use and kept (see the module documentation).
/// Calls are serialized; a call that fails drops the connection, and the next opens a
/// new one.
#[derive(Default)]
pub struct NetlinkSession {
    open: Mutex<Option<Open>>,
}

impl std::fmt::Debug for NetlinkSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = self.open.lock().map(|o| o.is_some()).unwrap_or(false);
        f.debug_struct("NetlinkSession")
            .field("open", &open)
            .finish()
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        // Dropping a runtime blocks on its tasks, which panics in async code (the
        // daemon drops its appliers there on shutdown); the only task is the socket's.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl NetlinkSession {
    /// A session that opens its connection on the first call.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` with this session's connection (opened now, in the calling thread's
    /// namespace, if it is not open yet). Must not be called from async code.
    pub(crate) fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T, NetError>
    where
        F: FnOnce(Handle) -> Fut,
        Fut: Future<Output = Result<T, NetError>>,
    {
        let mut guard = self.open.lock().map_err(|_| NetError::Netlink {
            what: what.to_owned(),
            reason: "the netlink session's lock is poisoned".into(),
        })?;
        if guard.is_none() {
            *guard = Some(open(what)?);
        }
        let Some((runtime, handle)) = guard
            .as_ref()
            .and_then(|o| o.runtime.as_ref().map(|r| (r, o.handle.clone())))
        else {
            return Err(NetError::Netlink {
                what: what.to_owned(),
                reason: "no netlink connection".into(),
            });
        };
        let result = runtime.block_on(f(handle));
        if result.is_err() {
            // Whatever went wrong, the next call starts from a fresh socket.
            *guard = None;
        }
        result
    }
}

/// Opens a socket on the calling thread and a runtime to drive it.
fn open(what: &str) -> Result<Open, NetError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NetError::Netlink {
            what: format!("{what}: starting a runtime"),
            reason: e.to_string(),
        })?;
    let handle = runtime.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetError::Netlink {
                what: format!("{what}: opening a netlink socket"),
                reason: e.to_string(),
            })?;
        tokio::spawn(connection);
        Ok::<_, NetError>(handle)
    })?;
    Ok(Open {
        runtime: Some(runtime),
        handle,
    })
}

/// A network interface of the session's namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Link {
    /// Interface index.
    pub(crate) index: u32,
    /// Administratively up.
    pub(crate) up: bool,
}

/// The interfaces of the session's namespace, by name.
pub(crate) async fn links(handle: &Handle) -> Result<BTreeMap<String, Link>, NetError> {
    let mut stream = handle.link().get().execute();
    let mut out = BTreeMap::new();
    while let Some(message) = stream
        .try_next()
        .await
        .map_err(|e| netlink_error("dumping links", &e))?
    {
        let name = message.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        if let Some(name) = name {
            out.insert(
                name,
                Link {
                    index: message.header.index,
                    up: message.header.flags.contains(LinkFlags::Up),
                },
            );
        }
    }
    Ok(out)
}

/// Sets a link administratively up.
pub(crate) async fn set_link_up(handle: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| netlink_error(format!("setting {name} up"), &e))
}

/// The errno of a netlink error reply, if it is one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// A netlink failure while doing `what`, with the errno's text when the kernel sent one.
pub(crate) fn netlink_error(what: impl Into<String>, e: &rtnetlink::Error) -> NetError {
    let reason = match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
        other => other.to_string(),
    };
    NetError::Netlink {
        what: what.into(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon calls the appliers from blocking tasks of its runtime; a session
    /// must work there, and keep working across calls from different threads.
    #[tokio::test]
    async fn a_session_works_from_blocking_tasks_and_is_kept() {
        let session = std::sync::Arc::new(NetlinkSession::new());
        for _ in 0..3 {
            let s = session.clone();
            let links = tokio::task::spawn_blocking(move || {
                s.run(
                    "listing links",
                    |handle| async move { links(&handle).await },
                )
            })
            .await
            .unwrap()
            .unwrap();
            assert!(links.contains_key("lo"), "{links:?}");
            assert!(format!("{session:?}").contains("open: true"));
        }
    }
}
