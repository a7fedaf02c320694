//! `parley admin`: add, remove, list accounts and reset passwords, straight in the server's
//! database, so it works whether the server is running or not.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use parley_proto::names;
use parley_server::accounts;
use parley_server::store::{SqliteStore, Store};

use crate::secrets;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Register a name with a password (asked for, or PARLEY_PASSWORD / --password-file).
    Add(NameArgs),
    /// Remove an account: the name becomes free for guests again.
    Remove(NameArgs),
    /// List the accounts.
    List(DataArgs),
    /// Set a new password for an account.
    ResetPassword(NameArgs),
}

#[derive(clap::Args)]
pub struct DataArgs {
    /// The server's data folder.
    #[arg(long, default_value = "parley-data", value_name = "DIR")]
    data_dir: PathBuf,
}

#[derive(clap::Args)]
pub struct NameArgs {
    /// The account's name.
    name: String,
    /// Read the password from this file's first line instead of asking.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
}

pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List(data) => {
            let store = open(&data)?;
            for account in store.accounts()? {
                println!("{}", account.name);
            }
        }
        Command::Add(args) => {
            names::validate_user_name(&args.name)
                .map_err(|err| anyhow::anyhow!("the name {:?} is not allowed: {err}", args.name))?;
            let store = open(&args.data)?;
            let hash = new_password(&args)?;
            // The account owns messages from now on, not those of earlier guests of the name.
            let since = store.last_id()?;
            if !store.create_account(&args.name, &hash, since)? {
                bail!(
                    "{} is registered already (reset-password changes its password)",
                    args.name
                );
            }
            println!("Registered {}.", args.name);
        }
        Command::ResetPassword(args) => {
            let store = open(&args.data)?;
            let hash = new_password(&args)?;
            if !store.set_password(&args.name, &hash)? {
                bail!("{} is not a registered name", args.name);
            }
            println!("Set a new password for {}.", args.name);
        }
        Command::Remove(args) => {
            let store = open(&args.data)?;
            if !store.remove_account(&args.name)? {
                bail!("{} is not a registered name", args.name);
            }
            println!("Removed the account {}.", args.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn open(data: &DataArgs) -> anyhow::Result<SqliteStore> {
    let path = data.data_dir.join("parley.db");
    if !path.exists() {
        bail!(
            "there is no Parley database in {} (give the server's --data-dir)",
            data.data_dir.display()
        );
    }
    SqliteStore::open(&path).with_context(|| format!("cannot open {}", path.display()))
}

/// The new password's hash, the password taken from the file, the environment or the terminal.
fn new_password(args: &NameArgs) -> anyhow::Result<String> {
    let password = match secrets::configured(args.password_file.as_deref())? {
        Some(password) => password,
        None if secrets::interactive() => {
            let first = secrets::prompt(&format!("Password for {}: ", args.name))?;
            if secrets::prompt("Repeat it: ")? != first {
                bail!("the two passwords differ");
            }
            first
        }
        None => bail!(
            "no password: give it in {} or --password-file, or run this at a terminal",
            secrets::PASSWORD_VAR
        ),
    };
    accounts::check_strength(&password).map_err(|refusal| anyhow::anyhow!(refusal.message))?;
    accounts::hash(&password).map_err(|err| anyhow::anyhow!("cannot hash the password: {err}"))
}
