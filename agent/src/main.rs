//! `lbfleet-agent`: runs on each diskless load balancer. This build can enroll and fetch the node's role;
//! applying it to the kernel (IPVS, VRRP, health checks) is not implemented yet and the binary says so.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lbfleet_agent::client::ServerClient;
use lbfleet_proto::EnrollRequest;

#[derive(Debug, Parser)]
#[command(
    name = "lbfleet-agent",
    version,
    about = "lbfleet node agent: pulls this node's role from lbfleet-server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll with a one-time token (or use a credential) and print the node's current role document as JSON.
    /// Applying the role (IPVS, VRRP, health checks) is not part of this build.
    FetchRole {
        /// Server URL, e.g. http://198.18.0.1:8080
        #[arg(long, env = "LBFLEET_SERVER")]
        server: String,
        /// One-time enrollment token (from the boot script's lbfleet.token=)
        #[arg(long, env = "LBFLEET_TOKEN", conflicts_with = "credential")]
        token: Option<String>,
        /// MAC of the boot interface (required with --token)
        #[arg(long, env = "LBFLEET_MAC", requires = "token")]
        mac: Option<String>,
        /// Node credential from an earlier enrollment
        #[arg(long, env = "LBFLEET_CREDENTIAL")]
        credential: Option<String>,
    },
}

async fn fetch_role(
    server: String,
    token: Option<String>,
    mac: Option<String>,
    credential: Option<String>,
) -> anyhow::Result<()> {
    let mut client = ServerClient::new(&server, credential)?;
    if let Some(token) = token {
        let mac = mac.ok_or_else(|| anyhow::anyhow!("--mac is required with --token"))?;
        let enrolled = client
            .enroll(&EnrollRequest {
                token,
                mac,
                agent_version: Some(env!("CARGO_PKG_VERSION").into()),
                image_version: None,
            })
            .await?;
        eprintln!(
            "enrolled as node {} (id {})",
            enrolled.node, enrolled.node_id
        );
    }
    anyhow::ensure!(
        client.credential().is_some(),
        "give --token and --mac, or --credential"
    );
    let role = client
        .poll_role(0, Duration::from_secs(5))
        .await?
        .ok_or_else(|| anyhow::anyhow!("the server returned no role document"))?;
    println!("{}", serde_json::to_string_pretty(&role)?);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::FetchRole {
            server,
            token,
            mac,
            credential,
        } => runtime.block_on(fetch_role(server, token, mac, credential)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
