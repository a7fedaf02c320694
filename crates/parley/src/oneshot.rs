//! One-shot commands for scripts: `parley files`, `parley download`, `parley upload`. Each
//! connects, signs in, does one thing, prints its result on stdout (progress on stderr) and
//! exits: 0 on success, 1 if it could not connect or sign in, 2 for a usage mistake, 4 if the
//! operation failed (the reason on stderr).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use parley_client::display::{listing_lines, sanitize};
use parley_client::{Client, ConnectOptions};
use parley_proto::request::List;

use crate::server::DEFAULT_PORT;
use crate::transfers::{self, Screen};
use crate::{client, secrets};

const EXIT_CONNECT: u8 = 1;
const EXIT_FAILED: u8 = 4;

/// Where to connect and as whom; the same as `parley client`'s options.
#[derive(clap::Args)]
pub struct ConnectArgs {
    /// The name to sign in as [default: $USER].
    #[arg(long, short = 'u', value_name = "USERNAME")]
    user: Option<String>,
    /// Server host name or address.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Server port.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Seconds to wait for the server to answer when connecting.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    connect_timeout: u64,
    /// Plain TCP, for a server run with --no-tls.
    #[arg(long, env = "PARLEY_NO_TLS", value_parser = clap::builder::BoolishValueParser::new())]
    no_tls: bool,
    /// Accept a server certificate that differs from the pinned one.
    #[arg(long)]
    accept_new_certificate: bool,
    /// Read the password (for a registered name) from this file; PARLEY_PASSWORD works too.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

impl ConnectArgs {
    fn user(&self) -> String {
        self.user
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "parley".into())
    }

    /// Connects and signs in, or says why not.
    async fn connect(&self) -> Result<Client, ExitCode> {
        let password = match secrets::configured(self.password_file.as_deref()) {
            Ok(password) => password,
            Err(err) => {
                eprintln!("parley: {err:#}");
                return Err(ExitCode::from(EXIT_CONNECT));
            }
        };
        let options = ConnectOptions {
            timeout: Duration::from_secs(self.connect_timeout),
            password,
            security: client::security(self.no_tls, self.accept_new_certificate),
            ..ConnectOptions::new(&self.host, self.port, self.user())
        };
        match Client::connect(&options).await {
            Ok((client, _events)) => {
                if let Some(note) = client::trust_note(&client) {
                    eprintln!("{note}");
                }
                Ok(client)
            }
            Err(err) => {
                eprintln!("parley: {}", client::client_error(&err));
                Err(ExitCode::from(EXIT_CONNECT))
            }
        }
    }
}

#[derive(clap::Args)]
pub struct FilesArgs {
    /// The shared folder to list [default: the top].
    #[arg(value_name = "DIR", default_value = "")]
    dir: String,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(clap::Args)]
pub struct DownloadArgs {
    /// The shared file, e.g. DeepFiles/video1.mp4.
    #[arg(value_name = "PATH")]
    path: String,
    /// Where to save it [default: <USERNAME>Files].
    #[arg(long, value_name = "DIR")]
    download_dir: Option<PathBuf>,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(clap::Args)]
pub struct UploadArgs {
    /// The local file to share.
    #[arg(value_name = "LOCAL_PATH")]
    local: PathBuf,
    /// The shared folder to put it in [default: the top].
    #[arg(value_name = "FOLDER", default_value = "")]
    folder: String,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Says what failed and picks the exit code.
fn failed(what: &str, err: impl std::fmt::Display) -> ExitCode {
    eprintln!("parley: {what} failed: {}", sanitize(&err.to_string()));
    ExitCode::from(EXIT_FAILED)
}

pub async fn files(args: FilesArgs) -> anyhow::Result<ExitCode> {
    let client = match args.connect.connect().await {
        Ok(client) => client,
        Err(code) => return Ok(code),
    };
    let result = client.call(List { path: args.dir }).await;
    let _ = client.quit().await;
    Ok(match result {
        Ok(listing) => {
            listing_lines(&listing).iter().for_each(|l| println!("{l}"));
            ExitCode::SUCCESS
        }
        Err(err) => failed("listing", err),
    })
}

pub async fn download(args: DownloadArgs) -> anyhow::Result<ExitCode> {
    let client = match args.connect.connect().await {
        Ok(client) => client,
        Err(code) => return Ok(code),
    };
    let dir = args
        .download_dir
        .unwrap_or_else(|| PathBuf::from(format!("{}Files", args.connect.user())));
    let table = transfers::Table::default();
    let result =
        transfers::download_with_progress(&client, &args.path, &dir, &table, &Screen::stderr())
            .await;
    let _ = client.quit().await;
    Ok(match result {
        Ok(saved) => {
            println!("{}", transfers::saved_line(&saved));
            ExitCode::SUCCESS
        }
        Err(err) => failed(&format!("downloading {}", args.path), err),
    })
}

pub async fn upload(args: UploadArgs) -> anyhow::Result<ExitCode> {
    let client = match args.connect.connect().await {
        Ok(client) => client,
        Err(code) => return Ok(code),
    };
    let table = transfers::Table::default();
    let result = transfers::upload_with_progress(
        &client,
        &args.local,
        &args.folder,
        &table,
        &Screen::stderr(),
    )
    .await;
    let _ = client.quit().await;
    Ok(match result {
        Ok(shared) => {
            println!("{}", transfers::shared_line(&args.local, &shared));
            ExitCode::SUCCESS
        }
        Err(err) => failed(&format!("uploading {}", args.local.display()), err),
    })
}
