//! The synchronous fast path: calling a plugin without a fiber.
//!
//! wasmtime runs an async call (`call_async`) on a fiber of its own, so
//! that a host function may wait and an epoch tick may hand the thread
//! back; every entry into wasm costs more there (BENCHMARKS.md, session
//! 13: 180 ns more for a bare call, about 430 ns more for an event, whose
//! five strings and lists enter the guest's allocator once each). Most
//! calls need neither: they wait on nothing and end well within a tick.
//!
//! So a plugin whose imports can all be served without waiting (no
//! key-value, HTTP or sockets, no granted directories) gets a second,
//! synchronous `InstancePre`, and its `handle` calls run straight on the
//! worker thread. Anything that would need the fiber ends the attempt with
//! [`LeaveFastPath`]: a `wasi:io` function that would wait (its future is
//! polled once, here), or a call running past its second epoch tick
//! (10-20 ms, [`super::engine::EPOCH_TICK`]). The event is then handled again from the start on a fiber,
//! as every call was before. Nothing the abandoned attempt did takes
//! effect: emitted events and its failure text are kept per call and
//! dropped, its `log` lines are held until the call ends (up to the 1 000
//! a call keeps) and dropped with it, and its instance, left in the middle
//! of a call, is discarded. Only lines written to a granted stdio stream
//! (and `log` lines past the first 1 000) reach the log at once, so a call
//! that leaves the fast path can log those twice.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};

use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::io::{poll as async_poll, streams as async_streams};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};

/// Calls that go to the fiber after one left the fast path, before the
/// fast path is tried again: a plugin that waits on I/O or computes for
/// long in every call then pays the abandoned attempt once in this many
/// calls, not in each.
const PAUSE_AFTER_LEAVING: u32 = 1_000;

/// Why an attempt on the fast path stopped: the call must run on a fiber.
/// Raised as the call's trap, and told apart from a plugin's own trap by
/// its type.
#[derive(Debug, thiserror::Error)]
pub enum LeaveFastPath {
    #[error("a wasi:io call would wait")]
    WouldWait,
    #[error("an epoch tick passed")]
    Tick,
}

impl LeaveFastPath {
    /// Whether a call's error is this one, rather than a trap of the plugin.
    pub fn is(error: &wasmtime::Error) -> bool {
        error.downcast_ref::<LeaveFastPath>().is_some()
    }
}

/// Whether a plugin's calls may try the fast path, and how many left it.
#[derive(Debug, Default)]
pub struct FastPathUse {
    /// Calls still to go to the fiber before trying the fast path again.
    paused: AtomicU32,
    /// Attempts that left the fast path (the metric
    /// `runnel_fast_path_left_total`).
    left: AtomicU64,
    /// Set when no instance could be made for the fast path: not tried
    /// again for this version of the plugin.
    stopped: AtomicBool,
}

impl FastPathUse {
    /// Whether this call may try the fast path; counts down a pause.
    pub fn try_now(&self) -> bool {
        if self.stopped.load(Relaxed) {
            return false;
        }
        // One atomic step, so that a pause set meanwhile by `left` is not
        // overwritten with an older count.
        self.paused
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_err()
    }

    /// Stops trying the fast path (no instance could be made for it).
    pub fn stop(&self) {
        self.stopped.store(true, Relaxed);
    }

    /// Notes an attempt that had to leave the fast path.
    pub fn left(&self) {
        self.left.fetch_add(1, Relaxed);
        self.paused.store(PAUSE_AFTER_LEAVING, Relaxed);
    }

    /// Attempts that left the fast path since the plugin was loaded.
    pub fn times_left(&self) -> u64 {
        self.left.load(Relaxed)
    }
}

/// Whether a component with these imports, under these grants, may use the
/// fast path: none of its imports may need to wait in the host. `wasi:io`'s
/// waits are served by `NonBlockingIo`; key-value, HTTP, sockets and a
/// granted directory's files are not (their host functions are async, or
/// block on Tokio in wasmtime-wasi's synchronous bindings).
pub fn eligible(imports: &[String], dirs_granted: bool) -> bool {
    imports.iter().all(|name| {
        !(name.starts_with("wasi:keyvalue/")
            || name.starts_with("wasi:http/")
            || name.starts_with("wasi:sockets/")
            || (dirs_granted && name.starts_with("wasi:filesystem/")))
    })
}

/// Polls a future once: its value if ready. Dropping `wasi:io`'s futures
/// unfinished is safe: they hold no state outside the resource table.
fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => Some(value),
        Poll::Pending => None,
    }
}

/// A host function's future polled once: its value if ready, otherwise
/// [`LeaveFastPath::WouldWait`].
fn once<T>(future: impl Future<Output = wasmtime::Result<T>>) -> wasmtime::Result<T> {
    poll_once(future).unwrap_or_else(|| Err(LeaveFastPath::WouldWait.into()))
}

/// [`once`] for the stream functions, whose traps travel in `StreamError`.
fn once_stream<T>(future: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    poll_once(future).unwrap_or_else(|| Err(StreamError::Trap(LeaveFastPath::WouldWait.into())))
}

/// `wasi:io`'s `poll` and `streams` for a synchronous store: what does not
/// wait is wasmtime-wasi's own, what would wait gets one poll and
/// otherwise leaves the fast path (wasmtime-wasi's synchronous versions
/// would block on the Tokio runtime, which panics on its worker threads).
pub struct NonBlockingIo<'a>(pub &'a mut ResourceTable);

/// Selects [`NonBlockingIo`] as the data the bindings' `add_to_linker` get.
pub struct NonBlocking;

impl HasData for NonBlocking {
    type Data<'a> = NonBlockingIo<'a>;
}

impl poll::Host for NonBlockingIo<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        once(async_poll::Host::poll(self.0, pollables))
    }
}

impl poll::HostPollable for NonBlockingIo<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        once(async_poll::HostPollable::ready(self.0, pollable))
    }
    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        once(async_poll::HostPollable::block(self.0, pollable))
    }
    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

impl streams::Host for NonBlockingIo<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, err)
    }
}

impl streams::HostOutputStream for NonBlockingIo<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        once(async_streams::HostOutputStream::drop(self.0, stream))
    }
    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        async_streams::HostOutputStream::check_write(self.0, stream)
    }
    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        async_streams::HostOutputStream::write(self.0, stream, bytes)
    }
    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        once_stream(async_streams::HostOutputStream::blocking_write_and_flush(
            self.0, stream, bytes,
        ))
    }
    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        once_stream(
            async_streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, stream, len),
        )
    }
    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        async_streams::HostOutputStream::subscribe(self.0, stream)
    }
    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        async_streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }
    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        async_streams::HostOutputStream::flush(self.0, stream)
    }
    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        once_stream(async_streams::HostOutputStream::blocking_flush(
            self.0, stream,
        ))
    }
    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        async_streams::HostOutputStream::splice(self.0, dst, src, len)
    }
    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        once_stream(async_streams::HostOutputStream::blocking_splice(
            self.0, dst, src, len,
        ))
    }
}

impl streams::HostInputStream for NonBlockingIo<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        once(async_streams::HostInputStream::drop(self.0, stream))
    }
    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        async_streams::HostInputStream::read(self.0, stream, len)
    }
    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        once_stream(async_streams::HostInputStream::blocking_read(
            self.0, stream, len,
        ))
    }
    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        async_streams::HostInputStream::skip(self.0, stream, len)
    }
    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        once_stream(async_streams::HostInputStream::blocking_skip(
            self.0, stream, len,
        ))
    }
    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        async_streams::HostInputStream::subscribe(self.0, stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_imports_that_never_wait_in_the_host_are_eligible() {
        let std_guest = names(&[
            "wasi:cli/environment@0.2.4",
            "wasi:io/streams@0.2.4",
            "wasi:filesystem/types@0.2.4",
            "runnel:plugin/host@0.2.0",
        ]);
        assert!(eligible(&std_guest, false));
        assert!(!eligible(&std_guest, true), "granted files can block");
        for waits in [
            "wasi:keyvalue/store@0.2.0-draft2",
            "wasi:http/outgoing-handler@0.2.0",
            "wasi:sockets/tcp@0.2.0",
        ] {
            let mut imports = std_guest.clone();
            imports.push(waits.into());
            assert!(!eligible(&imports, false), "{waits}");
        }
    }

    #[test]
    fn a_future_that_is_not_ready_leaves_the_fast_path() {
        let ready = once(async { Ok(7) });
        assert_eq!(ready.unwrap(), 7);
        let pending = once(std::future::pending::<wasmtime::Result<()>>());
        assert!(LeaveFastPath::is(&pending.unwrap_err()));
        let stream = once_stream(std::future::pending::<StreamResult<()>>());
        match stream {
            Err(StreamError::Trap(e)) => assert!(LeaveFastPath::is(&e)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn leaving_pauses_the_fast_path_for_a_while_then_tries_again() {
        let use_ = FastPathUse::default();
        assert!(use_.try_now());
        use_.left();
        assert_eq!(use_.times_left(), 1);
        let skipped = (0..PAUSE_AFTER_LEAVING).filter(|_| !use_.try_now()).count();
        assert_eq!(skipped, PAUSE_AFTER_LEAVING as usize);
        assert!(use_.try_now());
        use_.stop();
        assert!(!use_.try_now(), "stopped for good");
    }
}
