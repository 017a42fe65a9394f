//! Two nodes in one process open a TM2-compatible secret connection over loopback TCP and
//! exchange a line each way.
//!
//! Run: `cargo run --example secret_handshake`
//!
//! It shows the pieces a node is built from: a `NodeKey` (identity), its `PeerId`, and a
//! `SecretStream`, which authenticates the peer's key and encrypts everything after. The peer id
//! each side prints is derived from the key the other side proved it holds.

use std::time::Duration;

use tm2_p2p::NodeKey;
use tm2_p2p::actors::secret_stream::SecretStream;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let alice = NodeKey::generate()?;
    let bob = NodeKey::generate()?;
    println!("alice is {}", alice.id());
    println!("bob   is {}", bob.id());

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let bob_expected = bob.id();

    let bob_side = tokio::spawn(async move {
        let (tcp, remote) = listener.accept().await?;
        let stream = SecretStream::upgrade(tcp, &bob, HANDSHAKE_TIMEOUT).await?;
        println!("bob: authenticated {} from {remote}", stream.remote_id());
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        print!("bob got: {line}");
        write.write_all(b"hello alice, this is bob\n").await?;
        write.flush().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });

    let tcp = TcpStream::connect(addr).await?;
    let stream = SecretStream::upgrade(tcp, &alice, HANDSHAKE_TIMEOUT).await?;
    // The handshake authenticates a key, not an expectation: the dialer checks the id itself.
    if stream.remote_id() != bob_expected {
        return Err(format!("expected {bob_expected}, got {}", stream.remote_id()).into());
    }
    println!("alice: authenticated {}", stream.remote_id());
    let (read, mut write) = stream.into_split();
    write.write_all(b"hello bob, this is alice\n").await?;
    write.flush().await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    print!("alice got: {line}");

    bob_side.await?.map_err(|e| e.to_string())?;
    Ok(())
}
