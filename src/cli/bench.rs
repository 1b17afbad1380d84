//! `ferry bench-bare` (hidden): the bare handler `ferry bench` starts as a child process and
//! compares Ferry with. `ferry bench`'s own options are `crate::bench::BenchArgs`.

use super::CliError;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct BenchBareArgs {
    /// The address to listen on; port 0 takes a free port (the line on stdout names it).
    #[arg(long)]
    listen: SocketAddr,
    /// Append every body to a file in this folder and answer only once it is synced.
    #[arg(long)]
    synced_in: Option<PathBuf>,
}

/// Serves the bare handler until the process is stopped.
pub async fn bare(args: BenchBareArgs) -> Result<(), CliError> {
    let handler = crate::bench::bare_handler(args.synced_in.as_deref())?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    super::serve::announce(listener.local_addr()?);
    axum::serve(listener, handler).await?;
    Ok(())
}
