//! The secret connection over real loopback TCP and in-memory pipes: handshake, bulk data in
//! both directions, timeouts, and hostile bytes after the handshake.

#![allow(clippy::unwrap_used)] // Test code: a failed unwrap is a failed test.

use std::time::Duration;

use tm2_p2p::NodeKey;
use tm2_p2p::actors::secret_stream::{SecretReader, SecretStream, SecretStreamError, handshake};
use tm2_p2p::secret::{FRAME_LEN, FrameError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn connected_pair() -> (SecretStream, SecretStream, NodeKey, NodeKey) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (ka, kb) = (NodeKey::generate().unwrap(), NodeKey::generate().unwrap());
    let (ida, idb) = (ka.id(), kb.id());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let s = SecretStream::upgrade(tcp, &kb, TIMEOUT).await.unwrap();
        (s, kb)
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let a = SecretStream::upgrade(tcp, &ka, TIMEOUT).await.unwrap();
    let (b, kb) = server.await.unwrap();
    assert_eq!(a.remote_id(), idb);
    assert_eq!(b.remote_id(), ida);
    (a, b, ka, kb)
}

/// Deterministic pseudo-random bytes (xorshift), so a failure is reproducible.
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test]
async fn handshake_over_loopback_authenticates_both_sides() {
    let (a, b, ka, kb) = connected_pair().await;
    assert_eq!(a.remote_public_key(), &kb.public_key());
    assert_eq!(b.remote_public_key(), &ka.public_key());
}

#[tokio::test]
async fn ten_megabytes_each_way_arrive_intact() {
    const LEN: usize = 10 * 1024 * 1024;
    let (a, b, _, _) = connected_pair().await;
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let data_ab = pseudo_random(LEN, 1);
    let data_ba = pseudo_random(LEN, 2);
    let (ab, ba) = (data_ab.clone(), data_ba.clone());
    // Odd write sizes exercise partial frames and the whole-frame fast path.
    let wa = tokio::spawn(async move {
        for chunk in ab.chunks(65_536 + 7) {
            aw.write_all(chunk).await.unwrap();
        }
        aw.shutdown().await.unwrap();
    });
    let wb = tokio::spawn(async move {
        for chunk in ba.chunks(333) {
            bw.write_all(chunk).await.unwrap();
        }
        bw.shutdown().await.unwrap();
    });
    let ra = tokio::spawn(async move {
        let mut got = Vec::with_capacity(LEN);
        ar.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut got_b = Vec::with_capacity(LEN);
    br.read_to_end(&mut got_b).await.unwrap();
    let got_a = ra.await.unwrap();
    wa.await.unwrap();
    wb.await.unwrap();
    assert!(got_b == data_ab, "a -> b corrupted");
    assert!(got_a == data_ba, "b -> a corrupted");
}

#[tokio::test]
async fn buffers_stay_small_while_idle_and_grow_under_load() {
    use tm2_p2p::actors::secret_stream::{
        INITIAL_READ_FRAMES, READ_BUFFER_FRAMES, WRITE_BATCH_FRAMES,
    };
    let (a, b, _, _) = connected_pair().await;
    let (_ar, mut aw) = a.into_split();
    let (mut br, _bw) = b.into_split();
    aw.write_all(b"ping").await.unwrap();
    aw.flush().await.unwrap();
    let mut got = [0u8; 4];
    br.read_exact(&mut got).await.unwrap();
    // An idle connection: no write buffer once its frame is out, the initial read buffer.
    assert_eq!(aw.buffer_len(), 0);
    assert_eq!(br.buffer_len(), INITIAL_READ_FRAMES * FRAME_LEN);
    // Under load both grow, to their caps at most.
    let data = pseudo_random(4 * 1024 * 1024, 3);
    let writer = tokio::spawn(async move {
        aw.write_all(&data).await.unwrap();
        aw.flush().await.unwrap();
        aw
    });
    let mut sink = vec![0u8; 4 * 1024 * 1024];
    br.read_exact(&mut sink).await.unwrap();
    let aw = writer.await.unwrap();
    assert_eq!(aw.buffer_len(), WRITE_BATCH_FRAMES * FRAME_LEN);
    assert!(br.buffer_len() > INITIAL_READ_FRAMES * FRAME_LEN);
    assert!(br.buffer_len() <= READ_BUFFER_FRAMES * FRAME_LEN);
}

/// Polls `reader` once: whether the read had to wait (nothing buffered, nothing on the socket).
async fn read_would_wait(reader: &mut SecretReader<tokio::net::tcp::OwnedReadHalf>) -> bool {
    let mut space = [0u8; 64];
    std::future::poll_fn(|cx| {
        let mut rb = tokio::io::ReadBuf::new(&mut space);
        let polled = tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut *reader), cx, &mut rb);
        std::task::Poll::Ready(polled.is_pending())
    })
    .await
}

#[tokio::test]
async fn buffers_grown_by_a_burst_are_released_once_traffic_is_quiet_again() {
    use tm2_p2p::actors::secret_stream::{QUIET_BATCHES, WRITE_BATCH_FRAMES};
    let (a, b, _, _) = connected_pair().await;
    let (_ar, mut aw) = a.into_split();
    let (mut br, _bw) = b.into_split();
    // A stream of batches that alternate a full one and a flushed remainder of one frame keeps
    // the grown buffers: freeing and regrowing a whole batch per write would cost a busy stream.
    let chunk = pseudo_random(WRITE_BATCH_FRAMES * 1024 + 7, 4);
    let mut sink = vec![0u8; chunk.len()];
    for _ in 0..4 {
        aw.write_all(&chunk).await.unwrap();
        aw.flush().await.unwrap();
        br.read_exact(&mut sink).await.unwrap();
        assert!(sink == chunk, "corrupted");
        assert_eq!(aw.buffer_len(), WRITE_BATCH_FRAMES * FRAME_LEN);
    }
    assert!(
        br.buffer_len() > 2 * FRAME_LEN,
        "the burst grew the read buffer"
    );
    // Quiet traffic: single frames. After QUIET_BATCHES of them both halves let go.
    for i in 0..QUIET_BATCHES {
        aw.write_all(&[i; 16]).await.unwrap();
        aw.flush().await.unwrap();
        let mut got = [0u8; 16];
        br.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [i; 16]);
    }
    assert_eq!(aw.buffer_len(), 0, "the writer kept its burst batch");
    assert!(read_would_wait(&mut br).await);
    assert_eq!(
        br.buffer_len(),
        0,
        "the reader kept its burst buffer while waiting"
    );
    // And the stream goes on.
    aw.write_all(&chunk).await.unwrap();
    aw.flush().await.unwrap();
    br.read_exact(&mut sink).await.unwrap();
    assert!(sink == chunk, "corrupted after the release");
}

#[tokio::test]
async fn small_writes_share_frames() {
    let (a, b, _, _) = connected_pair().await;
    let (_ar, mut aw) = a.into_split();
    let (mut br, _bw) = b.into_split();
    for i in 0..100u8 {
        aw.write_all(&[i; 10]).await.unwrap();
    }
    aw.flush().await.unwrap();
    let mut got = vec![0; 1000];
    br.read_exact(&mut got).await.unwrap();
    for (i, chunk) in got.chunks(10).enumerate() {
        assert!(chunk.iter().all(|&b| b == i as u8));
    }
}

#[tokio::test]
async fn a_silent_peer_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The peer accepts the TCP connection and never says anything.
    let silent = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0; 64];
        let mut tcp = tcp;
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let key = NodeKey::generate().unwrap();
    let err = SecretStream::upgrade(tcp, &key, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, SecretStreamError::Timeout(_)), "{err:?}");
    assert!(!err.is_peer_fault());
    silent.await.unwrap();
}

#[tokio::test]
async fn a_peer_that_hangs_up_mid_handshake_is_an_error_not_a_hang() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rude = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        // Half an ephemeral-key message, then goodbye.
        tcp.write_all(&[0x22, 0x0a, 0x20, 1, 2, 3]).await.unwrap();
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let key = NodeKey::generate().unwrap();
    let err = SecretStream::upgrade(tcp, &key, TIMEOUT).await.unwrap_err();
    assert!(!matches!(err, SecretStreamError::Timeout(_)), "{err:?}");
    rude.await.unwrap();
}

#[tokio::test]
async fn a_garbage_ephemeral_key_is_a_typed_handshake_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hostile = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        // A well-framed message whose key is the all-zero (low-order) point.
        let mut msg = vec![0x22, 0x0a, 0x20];
        msg.extend_from_slice(&[0; 32]);
        tcp.write_all(&msg).await.unwrap();
        let mut sink = Vec::new();
        let _ = tcp.read_to_end(&mut sink).await;
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let key = NodeKey::generate().unwrap();
    let err = SecretStream::upgrade(tcp, &key, TIMEOUT).await.unwrap_err();
    assert!(matches!(err, SecretStreamError::Handshake(_)), "{err:?}");
    assert!(err.is_peer_fault());
    drop(hostile);
}

/// Runs the handshake over an in-memory pipe and returns both established sides with their
/// raw pipe ends, so a test can put arbitrary bytes on the wire after the handshake.
async fn piped() -> (
    (tm2_p2p::secret::Established, tokio::io::DuplexStream),
    (tm2_p2p::secret::Established, tokio::io::DuplexStream),
) {
    let (mut x, mut y) = tokio::io::duplex(1 << 16);
    let (ka, kb) = (NodeKey::generate().unwrap(), NodeKey::generate().unwrap());
    let (ra, rb) = tokio::join!(handshake(&mut x, &ka), handshake(&mut y, &kb));
    let (ea, left_a) = ra.unwrap();
    let (eb, left_b) = rb.unwrap();
    assert!(left_a.is_empty() && left_b.is_empty());
    ((ea, x), (eb, y))
}

/// Seals `data` with `established`'s sealer through a `SecretWriter` over a `Vec`, returning
/// the ciphertext.
async fn seal_to_vec(sealer: tm2_p2p::secret::FrameSealer, data: &[u8]) -> Vec<u8> {
    let mut w = tm2_p2p::actors::secret_stream::SecretWriter::new(Vec::new(), sealer);
    w.write_all(data).await.unwrap();
    w.flush().await.unwrap();
    w.into_inner()
}

#[tokio::test]
async fn small_writes_are_packed_into_full_frames() {
    let ((_ea, _x), (eb, _y)) = piped().await;
    let mut w = tm2_p2p::actors::secret_stream::SecretWriter::new(Vec::new(), eb.sealer);
    // 2,000 bytes in 200 writes: two frames (1024 + 976 data bytes), not 200.
    for i in 0..200u8 {
        w.write_all(&[i; 10]).await.unwrap();
    }
    w.flush().await.unwrap();
    assert_eq!(w.into_inner().len(), 2 * FRAME_LEN);
}

fn frame_error(err: &std::io::Error) -> Option<&FrameError> {
    err.get_ref().and_then(|e| e.downcast_ref::<FrameError>())
}

#[tokio::test]
async fn a_tampered_frame_is_invalid_data() {
    let ((ea, _x), (eb, mut y)) = piped().await;
    let mut wire = seal_to_vec(eb.sealer, b"hello").await;
    assert_eq!(wire.len(), FRAME_LEN);
    wire[100] ^= 1;
    y.write_all(&wire).await.unwrap();
    let mut r = SecretReader::new(_x, ea.opener);
    let mut buf = [0; 16];
    let err = r.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(
        matches!(frame_error(&err), Some(FrameError::Decrypt)),
        "{err:?}"
    );
    // The half stays failed.
    assert!(r.read(&mut buf).await.is_err());
}

#[tokio::test]
async fn a_replayed_frame_is_invalid_data() {
    let ((ea, x), (eb, mut y)) = piped().await;
    let wire = seal_to_vec(eb.sealer, b"once").await;
    y.write_all(&wire).await.unwrap();
    y.write_all(&wire).await.unwrap();
    let mut r = SecretReader::new(x, ea.opener);
    let mut buf = [0; 4];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"once");
    let err = r.read(&mut buf).await.unwrap_err();
    assert!(
        matches!(frame_error(&err), Some(FrameError::Decrypt)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_stream_cut_inside_a_frame_is_unexpected_eof() {
    let ((ea, x), (eb, mut y)) = piped().await;
    let wire = seal_to_vec(eb.sealer, b"cut short").await;
    y.write_all(&wire[..FRAME_LEN - 1]).await.unwrap();
    drop(y);
    let mut r = SecretReader::new(x, ea.opener);
    let mut buf = Vec::new();
    let err = r.read_to_end(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn a_clean_close_between_frames_is_eof() {
    let ((ea, x), (eb, mut y)) = piped().await;
    let wire = seal_to_vec(eb.sealer, b"bye").await;
    y.write_all(&wire).await.unwrap();
    drop(y);
    let mut r = SecretReader::new(x, ea.opener);
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, b"bye");
}

#[tokio::test]
async fn one_read_with_room_returns_every_buffered_frame() {
    let ((ea, x), (eb, mut y)) = piped().await;
    // Three frames' worth of data (1024 + 1024 + 452 bytes) all on the wire before the read.
    let data = pseudo_random(2500, 7);
    let wire = seal_to_vec(eb.sealer, &data).await;
    assert_eq!(wire.len(), 3 * FRAME_LEN);
    y.write_all(&wire).await.unwrap();
    let mut r = SecretReader::new(x, ea.opener);
    let mut buf = vec![0u8; 8192];
    let mut got = Vec::new();
    // The reader's buffer starts at two frames, so the first read may see two of the three; a
    // read never stops at one frame while it has more whole frames buffered and room for them.
    let n = r.read(&mut buf).await.unwrap();
    assert!(n >= 2 * 1024, "one read returned only {n} bytes");
    got.extend_from_slice(&buf[..n]);
    while got.len() < data.len() {
        let n = r.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == data, "data corrupted");
}

#[tokio::test]
async fn a_small_read_buffer_still_gets_every_byte_in_order() {
    let ((ea, x), (eb, mut y)) = piped().await;
    let data = pseudo_random(5000, 8);
    let wire = seal_to_vec(eb.sealer, &data).await;
    y.write_all(&wire).await.unwrap();
    drop(y);
    let mut r = SecretReader::new(x, ea.opener);
    let mut got = Vec::new();
    let mut buf = [0u8; 300];
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        assert!(n <= 300);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got == data, "data corrupted");
}

#[tokio::test]
async fn whole_frames_before_a_cut_are_returned_then_unexpected_eof() {
    let ((ea, x), (eb, mut y)) = piped().await;
    let data = pseudo_random(2048 + 10, 9);
    let wire = seal_to_vec(eb.sealer, &data).await;
    assert_eq!(wire.len(), 3 * FRAME_LEN);
    // Two whole frames and part of the third, then the peer hangs up.
    y.write_all(&wire[..2 * FRAME_LEN + 100]).await.unwrap();
    drop(y);
    let mut r = SecretReader::new(x, ea.opener);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    let err = loop {
        match r.read(&mut buf).await {
            Ok(0) => panic!("a cut inside a frame read as a clean end"),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(
        got == data[..2048],
        "the whole frames' data was not delivered"
    );
}

#[tokio::test]
async fn good_frames_before_a_bad_one_are_returned_then_the_error() {
    let ((ea, x), (eb, mut y)) = piped().await;
    let data = pseudo_random(3000, 10);
    let mut wire = seal_to_vec(eb.sealer, &data).await;
    wire[2 * FRAME_LEN + 50] ^= 1;
    y.write_all(&wire).await.unwrap();
    let mut r = SecretReader::new(x, ea.opener);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 8192];
    let err = loop {
        match r.read(&mut buf).await {
            Ok(n) => {
                assert!(n > 0);
                got.extend_from_slice(&buf[..n]);
            }
            Err(e) => break e,
        }
    };
    assert!(
        matches!(frame_error(&err), Some(FrameError::Decrypt)),
        "{err:?}"
    );
    assert!(got == data[..2048]);
    assert!(r.read(&mut buf).await.is_err());
}

#[tokio::test]
async fn a_reader_waiting_on_a_quiet_peer_holds_no_buffer() {
    let (a, b, _, _) = connected_pair().await;
    let (_ar, mut aw) = a.into_split();
    let (mut br, _bw) = b.into_split();
    aw.write_all(b"ping").await.unwrap();
    aw.flush().await.unwrap();
    let mut got = [0u8; 4];
    br.read_exact(&mut got).await.unwrap();
    // Poll once more: nothing is on the wire, so the read waits, and releases its buffer.
    assert!(read_would_wait(&mut br).await);
    assert_eq!(br.buffer_len(), 0);
    // The next message still arrives whole.
    aw.write_all(b"pong").await.unwrap();
    aw.flush().await.unwrap();
    br.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"pong");
}

#[tokio::test]
async fn early_data_reaches_the_peer_reader_and_the_sealer_continues_after_it() {
    use tm2_p2p::actors::secret_stream::{SecretWriter, handshake_with_early_data};
    let (mut x, mut y) = tokio::io::duplex(1 << 16);
    let (ka, kb) = (NodeKey::generate().unwrap(), NodeKey::generate().unwrap());
    let early = pseudo_random(5000, 11);
    // `b` sends none, as TM2 does.
    let (ra, rb) = tokio::join!(
        handshake_with_early_data(&mut x, &ka, &early),
        handshake(&mut y, &kb)
    );
    let (ea, left_a) = ra.unwrap();
    let (eb, left_b) = rb.unwrap();
    assert!(left_a.is_empty());
    assert_eq!(eb.remote_id(), ka.id());
    let (xr, xw) = tokio::io::split(x);
    let (yr, _yw) = tokio::io::split(y);
    let mut b_reader = SecretReader::with_leftover(yr, eb.opener, &left_b);
    let mut got = vec![0u8; early.len()];
    b_reader.read_exact(&mut got).await.unwrap();
    assert_eq!(got, early);
    let mut a_writer = SecretWriter::new(xw, ea.sealer);
    a_writer.write_all(b"after the early data").await.unwrap();
    a_writer.flush().await.unwrap();
    let mut got = [0u8; 20];
    b_reader.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"after the early data");
    drop(xr);
}

#[tokio::test]
async fn early_data_over_the_cap_fails_before_anything_is_sent() {
    use tm2_p2p::actors::secret_stream::handshake_with_early_data;
    use tm2_p2p::secret::{EARLY_DATA_MAX, HandshakeError};
    let (mut x, mut y) = tokio::io::duplex(1 << 16);
    let key = NodeKey::generate().unwrap();
    let err = handshake_with_early_data(&mut x, &key, &vec![0; EARLY_DATA_MAX + 1])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SecretStreamError::Handshake(HandshakeError::EarlyDataTooLarge { .. })
        ),
        "{err:?}"
    );
    assert!(!err.is_peer_fault());
    drop(x);
    let mut rest = Vec::new();
    y.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

/// A stream made on one runtime and moved with `register_with` works on another after the
/// first is gone, with what was buffered before the move intact. Without the move its socket
/// would still report readiness to the dead runtime's driver, and every read or write would
/// fail ("A Tokio 1.x context was found, but it is being shutdown" or similar).
#[test]
fn a_stream_moved_to_another_runtime_works_there_after_the_first_is_gone() {
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut a, mut b) = first.block_on(async {
        let (mut a, mut b, _, _) = connected_pair().await;
        // Bytes in flight across the move: written and flushed, partly read.
        let (_, aw) = a.halves_mut();
        aw.write_all(b"before the move").await.unwrap();
        aw.flush().await.unwrap();
        let (br, _) = b.halves_mut();
        let mut got = [0u8; 6];
        br.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"before");
        (a, b)
    });
    let second = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    a.register_with(second.handle()).unwrap();
    b.register_with(second.handle()).unwrap();
    drop(first);
    second.block_on(async move {
        let (mut ar, mut aw) = a.into_split();
        let (mut br, mut bw) = b.into_split();
        let mut rest = [0u8; 9];
        br.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b" the move");
        let data = pseudo_random(1 << 20, 9);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            aw.write_all(&sent).await.unwrap();
            aw.flush().await.unwrap();
            bw.write_all(b"and back").await.unwrap();
            bw.flush().await.unwrap();
        });
        let mut got = vec![0u8; data.len()];
        br.read_exact(&mut got).await.unwrap();
        assert!(got == data, "1 MiB arrived intact on the new runtime");
        let mut back = [0u8; 8];
        ar.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"and back");
        writer.await.unwrap();
    });
}

#[tokio::test]
async fn vectored_writes_of_odd_slices_arrive_as_one_stream() {
    const LEN: usize = 3 * 1024 * 1024 + 11;
    let (a, b, _, _) = connected_pair().await;
    let (_ar, mut aw) = a.into_split();
    let (mut br, _bw) = b.into_split();
    let data = pseudo_random(LEN, 3);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        // Slices of 1 to 3,000 bytes across frame and batch boundaries, many per call: each
        // call takes what the batch has room for, and the test writes the rest after it.
        let mut cuts = Vec::new();
        let (mut at, mut n) = (0, 1);
        while at < sent.len() {
            let end = (at + n).min(sent.len());
            cuts.push(at..end);
            at = end;
            n = n * 7 % 3001 + 1;
        }
        let mut slices: Vec<std::io::IoSlice<'_>> = cuts
            .iter()
            .map(|r| std::io::IoSlice::new(&sent[r.clone()]))
            .collect();
        let mut rest = &mut slices[..];
        let (mut calls, mut partial) = (0, 0);
        while !rest.is_empty() {
            let want: usize = rest.iter().map(|s| s.len()).sum();
            let n = aw.write_vectored(rest).await.unwrap();
            assert!(n > 0 && n <= want);
            partial += usize::from(n < want);
            calls += 1;
            std::io::IoSlice::advance_slices(&mut rest, n);
        }
        aw.flush().await.unwrap();
        (calls, partial)
    });
    let mut got = vec![0; LEN];
    tokio::time::timeout(TIMEOUT, br.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    let (calls, partial) = writer.await.unwrap();
    assert!(got == data, "the stream differs from what was written");
    // A call takes at most a batch: 3 MiB cannot go in one.
    assert!(calls > 1 && partial > 0, "{calls} calls, {partial} partial");
}
