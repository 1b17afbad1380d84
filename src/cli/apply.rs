//! `ferry apply -f FILE`: prints the plan that makes a running server's objects match the
//! file, then carries it out (the plan and its execution are `apply_plan`'s).

use super::table::print_json;
use super::{CliError, ClientArgs};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ApplyArgs {
    /// The config file whose objects to apply.
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// Also delete the objects made through the API that the file no longer has.
    #[arg(long)]
    prune: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: ApplyArgs) -> Result<(), CliError> {
    let ApplyArgs {
        file,
        prune,
        dry_run,
        client: args,
    } = args;
    let (wanted, notes) = super::apply_plan::read_file(&file, &|name| std::env::var(name).ok())?;
    let client = args.client()?;
    let remote = super::apply_plan::remote_objects(&client).await?;
    let changes = super::apply_plan::plan(&wanted, &remote, prune)?;
    if !args.json {
        for note in &notes {
            eprintln!("note: {note}");
        }
        print!("{}", super::apply_plan::render(&changes));
    }
    let done = if dry_run {
        0
    } else {
        super::apply_plan::execute(&client, &changes).await?
    };
    if args.json {
        print_json(&serde_json::json!({"dry_run": dry_run, "changes": changes, "applied": done}));
        return Ok(());
    }
    if dry_run {
        println!("dry run: nothing changed");
    } else {
        println!("applied {done} change(s)");
    }
    Ok(())
}
