//! [`SecretStream`]: a TCP connection upgraded with TM2's secret-connection handshake, split into
//! a read half and a write half that can live in separate tasks.
//!
//! The protocol lives in the sans-IO core [`crate::secret`]; this file only moves bytes:
//!
//! - [`SecretStream::upgrade`] runs the [`Handshake`] over the socket under one timeout. Bytes
//!   the peer sent after its auth frame (its first stream frames, which may arrive in the same
//!   segment) are kept for the reader, never dropped.
//!   [`SecretStream::upgrade_with_early_data`] also sends our first stream bytes (the
//!   transport's NodeInfo) in the same write as our auth frame, sealed exactly as the writer
//!   would seal them after the handshake, saving a round trip (see [`crate::secret`], "Early
//!   data").
//! - [`SecretWriter`] packs written bytes into 1044-byte frames, filling each frame's 1024 data
//!   bytes before sealing it (small writes share frames), and hands many sealed frames to the
//!   kernel in one `write` (up to [`WRITE_BATCH_FRAMES`]). Like a `BufWriter`, nothing is
//!   guaranteed to reach the socket until `flush`.
//! - [`SecretReader`] reads up to [`READ_BUFFER_FRAMES`] frames per `read` syscall and opens
//!   them in place in its buffer; no allocation per frame on either side. One `read` hands out
//!   the plaintext of every whole frame buffered, as far as the caller's buffer has room. While
//!   it waits on a quiet peer with nothing buffered it holds no buffer at all.
//!
//! Everything a peer sends is hostile: a frame that fails to authenticate, a length field over
//! 1024, or a stream that ends inside a frame is an `io::Error` of kind `InvalidData` (or
//! `UnexpectedEof`) carrying the typed [`FrameError`]; after an error the half stays failed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use ring::rand::SystemRandom;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::key::NodeKey;
use crate::secret::{
    DATA_LEN_SIZE, DATA_MAX, Established, FRAME_LEN, FrameError, FrameOpener, FrameSealer,
    Handshake, HandshakeError,
};
use crate::types::PeerId;

/// How many sealed frames the writer gathers before it must hand them to the kernel (267 KiB):
/// one `write` syscall per batch instead of per frame. TM2 writes each frame on its own,
/// behind a 64 KiB plaintext buffer. Until issue 17's third stop this was 64 frames (66 KiB);
/// with 256, a 1 MiB stream makes less than half the system calls and spends 15-28 % less
/// system time, and went 2-14 % faster in three sets of alternating runs (docs/PERFORMANCE.md).
/// Only a connection with that much to send fills it; a lone message is flushed at once.
pub const WRITE_BATCH_FRAMES: usize = 256;

/// How many frames the reader's buffer holds at most, so one `read` syscall can bring in many
/// frames: as many as the writer batches (a read takes a whole batch).
pub const READ_BUFFER_FRAMES: usize = 256;

/// How many frames the reader's buffer holds at first (it grows while the peer sends fast).
pub const INITIAL_READ_FRAMES: usize = 2;

/// Small batches in a row (writes of at most one frame; reads of at most
/// [`INITIAL_READ_FRAMES`] frames) after which a half that grew its buffer in a burst releases it
/// when it next has nothing buffered: a connection that was busy once does not keep up to
/// 267 KiB each way for the rest of its life.
pub const QUIET_BATCHES: u8 = 2;

/// Size of the buffer the handshake reads into: the largest handshake input (a 35-byte
/// ephemeral-key message plus a 1044-byte auth frame) with room for the peer's first frames.
const HANDSHAKE_READ_BUFFER: usize = 4 * FRAME_LEN;

/// Why a connection could not be upgraded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretStreamError {
    /// The socket failed (including the peer closing it mid-handshake).
    #[error("i/o error during the secret handshake: {0}")]
    Io(#[from] io::Error),
    /// The peer broke the handshake protocol (low-order key, bad signature, ...).
    #[error("secret handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The handshake did not complete within the configured timeout.
    #[error("secret handshake timed out after {0:?}")]
    Timeout(Duration),
}

impl SecretStreamError {
    /// True when the remote peer is to blame (it sent bad handshake bytes), as opposed to a
    /// network failure or a timeout.
    pub fn is_peer_fault(&self) -> bool {
        match self {
            Self::Handshake(e) => e.is_peer_fault(),
            Self::Io(_) | Self::Timeout(_) => false,
        }
    }
}

/// A TCP connection after a successful secret-connection handshake.
#[derive(Debug)]
pub struct SecretStream {
    /// The decrypting half.
    reader: SecretReader<OwnedReadHalf>,
    /// The encrypting half.
    writer: SecretWriter<OwnedWriteHalf>,
    /// The Ed25519 key the peer proved it holds.
    remote_public_key: [u8; 32],
    /// Set once the socket is registered with an I/O runtime rather than the one the caller
    /// made it on ([`register_with`](Self::register_with), or an upgrade the Transport ran on
    /// its I/O runtime): the Switch and [`PeerConn::start`](crate::actors::peer_conn::PeerConn::start)
    /// then leave it where it is.
    on_io_runtime: bool,
}

impl SecretStream {
    /// Runs the handshake on `tcp`, failing with [`SecretStreamError::Timeout`] if it takes
    /// longer than `timeout`. Sets `TCP_NODELAY`: the writer batches frames itself.
    pub async fn upgrade(
        tcp: TcpStream,
        key: &NodeKey,
        timeout: Duration,
    ) -> Result<Self, SecretStreamError> {
        Self::upgrade_with_early_data(tcp, key, timeout, &[]).await
    }

    /// Like [`upgrade`](Self::upgrade), and sends `early` (at most
    /// [`EARLY_DATA_MAX`](crate::secret::EARLY_DATA_MAX) bytes) on the encrypted stream in the
    /// same write as our auth frame, as if it had been written to the [`SecretWriter`] and
    /// flushed right after the handshake. The peer reads it as ordinary stream data.
    ///
    /// `early` leaves before the peer's signature is verified (encrypted to whoever ran the key
    /// agreement with us): send only what any peer may see.
    pub async fn upgrade_with_early_data(
        tcp: TcpStream,
        key: &NodeKey,
        timeout: Duration,
        early: &[u8],
    ) -> Result<Self, SecretStreamError> {
        Self::upgrade_with_first_message_timeout(tcp, key, timeout, timeout, early).await
    }

    /// Like [`upgrade_with_early_data`](Self::upgrade_with_early_data), and the peer's first
    /// message (its 35-byte ephemeral key) must have arrived in full within
    /// `first_message_timeout`, else the upgrade fails with [`SecretStreamError::Timeout`] of
    /// that duration. An honest peer sends it as soon as the connection opens, so a listener
    /// can free the slot of a silent or trickling socket long before `timeout`.
    pub async fn upgrade_with_first_message_timeout(
        tcp: TcpStream,
        key: &NodeKey,
        timeout: Duration,
        first_message_timeout: Duration,
        early: &[u8],
    ) -> Result<Self, SecretStreamError> {
        tcp.set_nodelay(true)?;
        let mut tcp = tcp;
        // No separate deadline when it would not end the handshake sooner.
        let first = (first_message_timeout < timeout).then_some(first_message_timeout);
        let (established, leftover) =
            tokio::time::timeout(timeout, drive_handshake(&mut tcp, key, early, first))
                .await
                .map_err(|_| SecretStreamError::Timeout(timeout))??;
        let (read, write) = tcp.into_split();
        let Established {
            remote_public_key,
            sealer,
            opener,
        } = established;
        Ok(Self {
            reader: SecretReader::with_leftover(read, opener, &leftover),
            writer: SecretWriter::new(write, sealer),
            remote_public_key,
            on_io_runtime: false,
        })
    }

    /// The Ed25519 public key the peer authenticated with.
    pub fn remote_public_key(&self) -> &[u8; 32] {
        &self.remote_public_key
    }

    /// The peer's id, derived from the authenticated key (never from what the peer claims).
    pub fn remote_id(&self) -> PeerId {
        PeerId::from_public_key(&self.remote_public_key)
    }

    /// Both halves, borrowed at once (to write and read concurrently before splitting, as the
    /// NodeInfo exchange does).
    pub fn halves_mut(
        &mut self,
    ) -> (
        &mut SecretReader<OwnedReadHalf>,
        &mut SecretWriter<OwnedWriteHalf>,
    ) {
        (&mut self.reader, &mut self.writer)
    }

    /// Splits into halves that can be moved to separate tasks.
    pub fn into_split(self) -> (SecretReader<OwnedReadHalf>, SecretWriter<OwnedWriteHalf>) {
        (self.reader, self.writer)
    }

    /// Moves the socket's readiness registration to `runtime`'s I/O driver, keeping everything
    /// buffered in both halves. A tokio socket tells the runtime it was created on when it
    /// becomes readable or writable, whichever runtime's tasks poll it: a stream accepted or
    /// dialed on the actix arbiter and then read and written by tasks on another runtime
    /// would wake the arbiter's thread for every readiness event, which then wakes the task's
    /// worker (two wake-ups instead of one, and no I/O at all while the arbiter is busy).
    ///
    /// The socket is duplicated and the duplicate registered with `runtime`; the original
    /// descriptor is deregistered and closed. On error (no descriptor left to duplicate, or
    /// `runtime` has no I/O driver) the stream is unchanged and stays usable where it was.
    pub fn register_with(&mut self, runtime: &tokio::runtime::Handle) -> io::Result<()> {
        use std::os::fd::AsFd;
        let tcp: &TcpStream = self.reader.io.as_ref();
        let dup = std::net::TcpStream::from(tcp.as_fd().try_clone_to_owned()?);
        // The duplicate shares the file status flags, non-blocking mode included.
        let moved = {
            let _inside = runtime.enter();
            TcpStream::from_std(dup)?
        };
        let (read, write) = moved.into_split();
        // The original's write half must not shut the socket's sending side down on drop
        // (`forget`); dropping its read half then deregisters it from its runtime and closes
        // its descriptor. The socket lives on in the duplicate.
        std::mem::replace(&mut self.writer.io, write).forget();
        drop(std::mem::replace(&mut self.reader.io, read));
        self.on_io_runtime = true;
        Ok(())
    }

    /// True once the socket is registered with an I/O runtime: by
    /// [`register_with`](Self::register_with), or because the Transport ran the upgrade on
    /// its I/O runtime ([`Transport::with_io_runtime`](crate::actors::transport::Transport::with_io_runtime)).
    pub fn is_on_io_runtime(&self) -> bool {
        self.on_io_runtime
    }

    /// Records that the socket was made on an I/O runtime (the Transport's upgrade ran there).
    pub(crate) fn made_on_io_runtime(&mut self) {
        self.on_io_runtime = true;
    }
}

/// Runs the secret handshake over any byte stream. Returns the established state and the bytes
/// the peer sent after its auth frame (the start of its encrypted stream).
///
/// Both sides write before they read; this cannot deadlock because each handshake write (35
/// bytes, then 1044, or at most 17 frames with early data) fits in the socket buffers.
pub async fn handshake<S>(
    io: &mut S,
    key: &NodeKey,
) -> Result<(Established, Vec<u8>), SecretStreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    handshake_with_early_data(io, key, &[]).await
}

/// Like [`handshake`], and sends `early` on the encrypted stream in the same write as our auth
/// frame ([`Handshake::with_early_data`]); the returned sealer continues after it.
pub async fn handshake_with_early_data<S>(
    io: &mut S,
    key: &NodeKey,
    early: &[u8],
) -> Result<(Established, Vec<u8>), SecretStreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    drive_handshake(io, key, early, None).await
}

/// [`handshake_with_early_data`], failing with [`SecretStreamError::Timeout`] if the peer's
/// first message has not arrived in full within `first_message` (when given).
async fn drive_handshake<S>(
    io: &mut S,
    key: &NodeKey,
    early: &[u8],
    first_message: Option<Duration>,
) -> Result<(Established, Vec<u8>), SecretStreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Without a first-message deadline the select below never polls this (so no timer is
    // registered).
    let first_deadline = tokio::time::sleep(first_message.unwrap_or(Duration::MAX));
    tokio::pin!(first_deadline);
    let rng = SystemRandom::new();
    let mut hs = Handshake::with_early_data(key, &rng, early)?;
    let mut buf = vec![0u8; HANDSHAKE_READ_BUFFER];
    let mut filled = 0;
    loop {
        let mut wrote = false;
        while let Some(out) = hs.poll_transmit() {
            io.write_all(&out).await?;
            wrote = true;
        }
        if wrote {
            io.flush().await?;
        }
        if hs.is_established() {
            break;
        }
        if filled > 0 {
            let used = hs.handle_bytes(&buf[..filled])?;
            buf.copy_within(used..filled, 0);
            filled -= used;
            if used > 0 {
                continue;
            }
        }
        if filled == buf.len() {
            // The core consumed nothing from a full buffer: no valid handshake looks like this.
            return Err(HandshakeError::Malformed("handshake message does not fit").into());
        }
        let n = tokio::select! {
            read = io.read(&mut buf[filled..]) => read?,
            () = &mut first_deadline, if first_message.is_some() && hs.awaits_first_message() => {
                let after = first_message.unwrap_or_default();
                return Err(SecretStreamError::Timeout(after));
            }
        };
        if n == 0 {
            hs.handle_eof()?;
            return Err(HandshakeError::UnexpectedEof.into());
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok((hs.finish()?, buf))
}

/// The encrypting half: an [`AsyncWrite`] that seals bytes into frames and writes them in
/// batches. Call `flush` to push out a partly filled frame.
pub struct SecretWriter<W> {
    /// The socket half.
    io: W,
    /// Seals each frame with the next send nonce.
    sealer: FrameSealer,
    /// Data bytes in the frame being filled, which lies in `out` right after the sealed ones
    /// (at `out_len`), its data written in place after its length field: every byte written
    /// is copied once, into the frame it is sent in, and sealed there. Sealed when full or on
    /// flush; 0: no frame is being filled.
    open: usize,
    /// Sealed frames waiting for the socket, then the frame being filled. Grows a frame at a
    /// time up to `WRITE_BATCH_FRAMES` frames as writes need it; released when a single frame
    /// has been written out and nothing larger was written the time before
    /// ([`QUIET_BATCHES`]), so a quiet connection holds none, even after a burst.
    out: Vec<u8>,
    /// End of the sealed bytes in `out`.
    out_len: usize,
    /// How much of `out[..out_len]` the socket has taken.
    out_pos: usize,
    /// Batches of at most one frame written in a row (saturating): [`QUIET_BATCHES`] of them
    /// mean the burst that grew `out` is over.
    small_batches: u8,
    /// Set after a sealing error (nonce exhausted): the half refuses further writes.
    failed: Option<FrameError>,
}

impl<W: AsyncWrite + Unpin> SecretWriter<W> {
    /// Wraps a socket half and the sealer from an established handshake.
    pub fn new(io: W, sealer: FrameSealer) -> Self {
        Self {
            io,
            sealer,
            open: 0,
            out: Vec::new(),
            out_len: 0,
            out_pos: 0,
            small_batches: 0,
            failed: None,
        }
    }

    /// The socket half.
    pub fn get_ref(&self) -> &W {
        &self.io
    }

    /// Bytes this half holds for buffering (its batch of sealed frames): none once a quiet
    /// connection's frame is written out, at most `WRITE_BATCH_FRAMES` frames.
    pub fn buffer_len(&self) -> usize {
        self.out.len()
    }

    /// Gives back the socket half, dropping anything not yet flushed.
    pub fn into_inner(self) -> W {
        self.io
    }

    /// Copies as much of `data` as fits into the frame being filled (starting one in the
    /// next free slot if none is), sealing the frame when it is full; returns how much it
    /// took (0 when the batch has no free slot).
    fn fill(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.open == 0 {
            if !self.has_slot() {
                return Ok(0);
            }
            let end = self.out_len + FRAME_LEN;
            if self.out.len() < end {
                self.out.resize(end, 0);
            }
        }
        let n = data.len().min(DATA_MAX - self.open);
        let at = self.out_len + DATA_LEN_SIZE + self.open;
        self.out[at..at + n].copy_from_slice(&data[..n]);
        self.open += n;
        if self.open == DATA_MAX {
            self.seal_open()?;
        }
        Ok(n)
    }

    /// Seals the frame being filled, in place.
    fn seal_open(&mut self) -> io::Result<()> {
        let at = self.out_len;
        let frame: &mut [u8; FRAME_LEN] = (&mut self.out[at..at + FRAME_LEN])
            .try_into()
            .expect("invariant: the frame being filled is FRAME_LEN bytes inside `out`");
        match self.sealer.seal_filled(self.open, frame) {
            Ok(()) => {
                self.out_len += FRAME_LEN;
                self.open = 0;
                Ok(())
            }
            Err(e) => {
                self.failed = Some(e);
                Err(frame_io_error(e))
            }
        }
    }

    /// True when the batch has room for one more frame after the sealed ones.
    fn has_slot(&self) -> bool {
        self.out_len + FRAME_LEN <= WRITE_BATCH_FRAMES * FRAME_LEN
    }

    /// Writes all sealed frames to the socket (the frame being filled, if any, stays).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let batch = self.out_len;
        while self.out_pos < self.out_len {
            let n = ready!(
                Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_pos..self.out_len])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        if self.open > 0 {
            // Not reached (the frame being filled is sealed before a drain, or there is none
            // when the batch is full), but cheap to keep right: it moves to the front.
            let at = self.out_len;
            self.out.copy_within(at..at + DATA_LEN_SIZE + self.open, 0);
        }
        self.out_pos = 0;
        self.out_len = 0;
        if batch > FRAME_LEN {
            self.small_batches = 0;
        } else if batch > 0 {
            self.small_batches = self.small_batches.saturating_add(1);
        }
        if self.open == 0 && (self.out.len() <= FRAME_LEN || self.small_batches >= QUIET_BATCHES) {
            // A quiet connection's single frame: hold no buffers until the next write. A busy
            // one (grown batch) keeps them until its writes have been single frames for a
            // while (a stream's batches alternate full ones and a flushed remainder, which
            // must not free and regrow its batch each time).
            self.out = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Seals the partly filled frame, if any, then drains.
    fn poll_push(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.failed {
            return Poll::Ready(Err(frame_io_error(e)));
        }
        if self.open > 0 {
            // The frame being filled already has its slot.
            self.seal_open()?;
        }
        self.poll_drain(cx)
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SecretWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    /// Takes the slices in order, as much as the batch has room for: each byte is copied
    /// once, into the frame it is sealed in, whatever the slices' boundaries. Drains the batch
    /// first if it is full.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = this.failed {
            return Poll::Ready(Err(frame_io_error(e)));
        }
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        if this.open == 0 && !this.has_slot() {
            ready!(this.poll_drain(cx))?;
        }
        let mut taken = 0;
        for buf in bufs {
            let mut rest = &buf[..];
            while !rest.is_empty() {
                let n = this.fill(rest)?;
                if n == 0 {
                    // The batch is full: the caller comes back for the rest.
                    return Poll::Ready(Ok(taken));
                }
                taken += n;
                rest = &rest[n..];
            }
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_push(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_push(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<W> std::fmt::Debug for SecretWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretWriter")
            .field("open", &self.open)
            .field("queued", &(self.out_len - self.out_pos))
            .finish_non_exhaustive()
    }
}

/// The decrypting half: an [`AsyncRead`] over the peer's frames.
pub struct SecretReader<R> {
    /// The socket half.
    io: R,
    /// Opens each frame with the next receive nonce.
    opener: FrameOpener,
    /// Ciphertext read from the socket. Frames are opened in place, so the plaintext being
    /// handed out also lives here. Starts at [`INITIAL_READ_FRAMES`] frames and doubles, up to
    /// [`READ_BUFFER_FRAMES`], whenever a read fills it: an idle connection stays small, a busy
    /// one reads many frames per syscall.
    buf: Vec<u8>,
    /// Start of unopened ciphertext in `buf`.
    start: usize,
    /// End of the bytes read into `buf`.
    end: usize,
    /// The unread plaintext of the last opened frame, as a range of `buf`.
    plain: std::ops::Range<usize>,
    /// Reads in a row that took at most [`INITIAL_READ_FRAMES`] frames (saturating):
    /// [`QUIET_BATCHES`] of them mean the burst that grew `buf` is over.
    small_reads: u8,
    /// Set after a frame failed to open: the half refuses further reads.
    failed: Option<FrameError>,
}

impl<R: AsyncRead + Unpin> SecretReader<R> {
    /// Wraps a socket half and the opener from an established handshake.
    pub fn new(io: R, opener: FrameOpener) -> Self {
        Self::with_leftover(io, opener, &[])
    }

    /// Like [`SecretReader::new`], starting with ciphertext already read from the socket (what
    /// the handshake read past the auth frame; at most a few frames).
    pub fn with_leftover(io: R, opener: FrameOpener, leftover: &[u8]) -> Self {
        let cap = (INITIAL_READ_FRAMES * FRAME_LEN)
            .max(leftover.len().next_multiple_of(FRAME_LEN) + FRAME_LEN);
        let mut buf = vec![0; cap];
        buf[..leftover.len()].copy_from_slice(leftover);
        Self {
            io,
            opener,
            buf,
            start: 0,
            end: leftover.len(),
            plain: 0..0,
            small_reads: 0,
            failed: None,
        }
    }

    /// The socket half.
    pub fn get_ref(&self) -> &R {
        &self.io
    }

    /// Bytes this half holds for buffering: none while it waits on a quiet peer with nothing
    /// buffered, [`INITIAL_READ_FRAMES`] frames while the peer sends little, at most
    /// [`READ_BUFFER_FRAMES`] frames.
    pub fn buffer_len(&self) -> usize {
        self.buf.len()
    }

    /// Opens the frame at `start`, which is complete in `buf`.
    fn open_next(&mut self) -> io::Result<()> {
        let at = self.start;
        let frame: &mut [u8; FRAME_LEN] = (&mut self.buf[at..at + FRAME_LEN])
            .try_into()
            .map_err(|_| io::Error::other("frame out of range"))?;
        match self.opener.open(frame) {
            Ok(data) => {
                // The data sits right after the 4-byte length field of the opened frame.
                let len = data.len();
                self.plain = at + 4..at + 4 + len;
                self.start += FRAME_LEN;
                Ok(())
            }
            Err(e) => {
                self.failed = Some(e);
                Err(frame_io_error(e))
            }
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for SecretReader<R> {
    /// Fills `out` with the plaintext of every complete frame already buffered (opened in
    /// place one after another while `out` has room), reading from the socket only when no
    /// whole frame is buffered and nothing was handed out yet.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = out.filled().len();
        loop {
            let gave = out.filled().len() > before;
            if let Some(e) = this.failed {
                // Data handed out before a bad frame is returned first; the error comes next.
                return Poll::Ready(if gave { Ok(()) } else { Err(frame_io_error(e)) });
            }
            if !this.plain.is_empty() {
                let n = this.plain.len().min(out.remaining());
                out.put_slice(&this.buf[this.plain.start..this.plain.start + n]);
                this.plain.start += n;
                if out.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if this.end - this.start >= FRAME_LEN {
                // A frame of zero data bytes yields nothing; keep going rather than report EOF.
                // A frame that fails to open sets `failed`, reported on the next turn.
                let _ = this.open_next();
                continue;
            }
            if gave {
                return Poll::Ready(Ok(()));
            }
            // Need more ciphertext. No plaintext is pending, so the partial frame can move to
            // the front of the buffer.
            this.plain = 0..0;
            if this.start > 0 {
                this.buf.copy_within(this.start..this.end, 0);
                this.end -= this.start;
                this.start = 0;
            }
            if this.buf.is_empty() {
                // Released while idle (below): take the quiet-size buffer back.
                this.buf.resize(INITIAL_READ_FRAMES * FRAME_LEN, 0);
            }
            let space = this.buf.len() - this.end;
            let mut rb = ReadBuf::new(&mut this.buf[this.end..]);
            let polled = Pin::new(&mut this.io).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            if polled.is_pending() {
                if this.end == 0
                    && (this.buf.len() <= INITIAL_READ_FRAMES * FRAME_LEN
                        || this.small_reads >= QUIET_BATCHES)
                {
                    // Nothing buffered and the peer is quiet: hold no buffer while waiting.
                    // A busy connection keeps its grown buffer until its reads have been
                    // small for a while.
                    this.buf = Vec::new();
                }
                return Poll::Pending;
            }
            if let Poll::Ready(Err(e)) = polled {
                return Poll::Ready(Err(e));
            }
            if n > INITIAL_READ_FRAMES * FRAME_LEN {
                this.small_reads = 0;
            } else if n > 0 {
                this.small_reads = this.small_reads.saturating_add(1);
            }
            if n == space && this.buf.len() < READ_BUFFER_FRAMES * FRAME_LEN {
                // The socket had at least as much as we could take: read more at once next time.
                let grown = (this.buf.len() * 2).min(READ_BUFFER_FRAMES * FRAME_LEN);
                this.buf.resize(grown, 0);
            }
            if n == 0 {
                if this.end > 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a secret-connection frame",
                    )));
                }
                return Poll::Ready(Ok(()));
            }
            this.end += n;
        }
    }
}

impl<R> std::fmt::Debug for SecretReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretReader")
            .field("buffered", &(self.end - self.start))
            .field("plain", &self.plain.len())
            .finish_non_exhaustive()
    }
}

/// Wraps a frame error as an `io::Error` of kind `InvalidData`, keeping the typed error as its
/// source (`err.get_ref()` downcasts to [`FrameError`]).
fn frame_io_error(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}
