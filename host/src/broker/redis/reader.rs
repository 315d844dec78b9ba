//! The blocking reader: `XREADGROUP ... BLOCK` on a plain connection of its
//! own, its reply decoded straight out of the socket buffer.
//!
//! Why not a redis-rs connection: its reply parser (combine, resumable across
//! reads) cost about 2 µs per entry of a 512-entry reply, a quarter of the
//! consumer's CPU in a profile of `runnel bench` (redis-rs/redis-rs#2184
//! reports the same for pipelined replies). A blocking read monopolises its
//! connection anyway, so nothing is lost by not multiplexing it. Commands are
//! still packed by redis-rs; replies are split into frames by `redis-protocol`
//! as ranges of the buffer, and bytes are copied once, into the entries.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use redis::{Cmd, ConnectionAddr, ConnectionInfo};
use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::types::RangeFrame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Either transport Redis listens on.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Room kept free in the buffer before each socket read: a 512-entry reply of
/// typical envelopes is about 170 KB, so it arrives in a few reads.
const READ_ROOM: usize = 128 * 1024;

/// One connection that answers one command at a time.
pub struct Reader {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    /// The server's id of this connection (`CLIENT ID`), which another
    /// connection names to end a blocked read (`CLIENT UNBLOCK`). `None`
    /// where the server refuses `CLIENT` (a restricted ACL user, a proxy):
    /// reading works all the same, a shutdown then waits out the BLOCK.
    client_id: Option<i64>,
}

impl Reader {
    /// Connects (over TLS with `tls`, for a `rediss://` address) and
    /// authenticates as `info` says (password, user, database).
    pub async fn connect(
        info: &ConnectionInfo,
        tls: Option<&tokio_rustls::TlsConnector>,
        timeout: Duration,
    ) -> anyhow::Result<Reader> {
        let io: Box<dyn Io> = match info.addr() {
            ConnectionAddr::TcpTls { host, port, .. } => {
                let tls = tls.context("a rediss:// address needs TLS settings")?;
                let tcp = tcp(host, *port, timeout).await?;
                let name = super::tls::server_name(host)?;
                let stream = tokio::time::timeout(timeout, tls.connect(name, tcp))
                    .await
                    .map_err(|_| anyhow!("no TLS handshake within {timeout:?}"))??;
                Box::new(stream)
            }
            ConnectionAddr::Tcp(host, port) => Box::new(tcp(host, *port, timeout).await?),
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Box::new(
                tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| anyhow!("no connection within {timeout:?}"))??,
            ),
            other => bail!("the stream reader cannot connect to {other:?}"),
        };
        let mut reader = Reader {
            io,
            buf: Vec::new(),
            client_id: None,
        };
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = settings.username() {
                auth.arg(user);
            }
            auth.arg(password);
            reader.expect_ok(&auth, timeout).await.context("AUTH")?;
        }
        if settings.db() != 0 {
            let select = redis::cmd("SELECT").arg(settings.db()).to_owned();
            reader.expect_ok(&select, timeout).await.context("SELECT")?;
        }
        let id = reader
            .call(
                &redis::cmd("CLIENT").arg("ID").to_owned(),
                timeout,
                |buf, frame| match frame {
                    RangeFrame::Integer(id) => Ok(id),
                    other => Err(describe(buf, &other)),
                },
            )
            .await?;
        match id {
            Ok(id) => reader.client_id = Some(id),
            Err(refused) => tracing::debug!(
                "CLIENT ID refused ({refused}): a shutdown will wait for blocked reads to time out"
            ),
        }
        Ok(reader)
    }

    /// The server's id of this connection, if it told.
    pub fn client_id(&self) -> Option<i64> {
        self.client_id
    }

    async fn expect_ok(&mut self, cmd: &Cmd, timeout: Duration) -> anyhow::Result<()> {
        self.call(cmd, timeout, |buf, frame| match frame {
            RangeFrame::SimpleString(_) => Ok(()),
            other => Err(anyhow!("unexpected reply {}", describe(buf, &other))),
        })
        .await?
    }

    /// Sends `cmd` and hands its reply to `read`, which sees the frame as
    /// ranges of `buf`. A reply that does not come within `timeout` is an
    /// error; the connection must then be dropped, as its answer may still
    /// arrive.
    pub async fn call<T>(
        &mut self,
        cmd: &Cmd,
        timeout: Duration,
        read: impl FnOnce(&[u8], RangeFrame) -> T,
    ) -> anyhow::Result<T> {
        let work = async {
            self.io.write_all(&cmd.get_packed_command()).await?;
            loop {
                if !self.buf.is_empty() {
                    if let Some((frame, used)) =
                        decode_range(&self.buf).map_err(|e| anyhow!("malformed reply: {e}"))?
                    {
                        let out = read(&self.buf[..used], frame);
                        self.buf.drain(..used);
                        return anyhow::Ok(out);
                    }
                }
                if self.buf.capacity() - self.buf.len() < READ_ROOM / 2 {
                    self.buf.reserve(READ_ROOM);
                }
                if self.io.read_buf(&mut self.buf).await? == 0 {
                    bail!("connection closed by the server");
                }
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| anyhow!("no reply within {timeout:?}"))?
    }
}

/// A TCP connection to Redis, without Nagle's delay (replies are read as
/// soon as they come).
async fn tcp(host: &str, port: u16, timeout: Duration) -> anyhow::Result<tokio::net::TcpStream> {
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port)))
        .await
        .map_err(|_| anyhow!("no connection within {timeout:?}"))??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// The bytes a range of the buffer holds.
pub fn bytes<'a>(buf: &'a [u8], range: &(usize, usize)) -> &'a [u8] {
    &buf[range.0..range.1]
}

/// A frame in a few words, for errors.
pub fn describe(buf: &[u8], frame: &RangeFrame) -> String {
    match frame {
        RangeFrame::Error(r) | RangeFrame::SimpleString(r) | RangeFrame::BulkString(r) => {
            String::from_utf8_lossy(bytes(buf, r)).into_owned()
        }
        RangeFrame::Integer(i) => i.to_string(),
        RangeFrame::Array(items) => format!("an array of {}", items.len()),
        RangeFrame::Null => "nil".into(),
    }
}
