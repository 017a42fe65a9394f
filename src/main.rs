//! `tm2p2p`: the command-line front end of the tm2-p2p runtime.

fn main() {
    println!("tm2p2p {}", env!("CARGO_PKG_VERSION"));
}
