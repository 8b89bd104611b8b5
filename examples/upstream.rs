//! The demo upstream on its own, for load runs and for trying the gateway against a separate
//! process: `cargo run --example upstream -- [--listen 127.0.0.1:3000]`.
//!
//! Its routes each show one way an upstream fails; see `examples/support/demo_upstream.rs`.

#[path = "support/demo_upstream.rs"]
mod demo_upstream;

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:3000".parse().expect("default address");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(addr)) => match addr.parse() {
                Ok(addr) => listen = addr,
                Err(_) => return Err(std::io::Error::other("--listen takes ADDR:PORT")),
            },
            _ => {
                return Err(std::io::Error::other(
                    "usage: upstream [--listen ADDR:PORT]",
                ));
            }
        }
    }
    let upstream = demo_upstream::spawn_on(listen).await?;
    println!("listening on http://{}", upstream.addr);
    for (route, what) in demo_upstream::ROUTES {
        println!("  {route:<16} {what}");
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}
