//! `ferry bench` (filled in below).
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}
pub fn run(_a: BenchArgs) -> Result<(), std::io::Error> { Ok(()) }
