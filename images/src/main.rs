//! `lbfleet-images`: thin binary over the library. `build` writes `target/images/<version>/`; `verify DIR`
//! checks an image directory against its manifest.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lbfleet_images::{build_image, BuildOptions, Manifest};

#[derive(Debug, Parser)]
#[command(
    name = "lbfleet-images",
    version,
    about = "Builds lbfleet boot images (kernel, initramfs, manifest)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an image into OUT/<version>/ (vmlinuz, initrd.img, manifest.json).
    Build {
        /// The lbfleet-agent binary to ship (`make image` builds it in release mode first)
        #[arg(long, default_value = "target/release/lbfleet-agent")]
        agent: PathBuf,
        /// Output root
        #[arg(long, default_value = "target/images")]
        out: PathBuf,
        /// Image version (default: agent version + 8 hex digits of the content's sha256)
        #[arg(long = "image-version")]
        image_version: Option<String>,
        /// Kernel version in /boot (default: the newest with IPVS modules)
        #[arg(long)]
        kernel_version: Option<String>,
        /// Leave ipvsadm out of the image even if this machine has it
        #[arg(long)]
        no_ipvsadm: bool,
        /// Extra kernel modules (with dependencies), e.g. --module 8021q
        #[arg(long = "module")]
        modules: Vec<String>,
        /// Kernel arguments recorded in the manifest
        #[arg(long, default_value = lbfleet_images::build::DEFAULT_CMDLINE)]
        cmdline: String,
    },
    /// Check an image directory against its manifest.json.
    Verify { dir: PathBuf },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build {
            agent,
            out,
            image_version,
            kernel_version,
            no_ipvsadm,
            modules,
            cmdline,
        } => {
            let mut opts = BuildOptions::new(agent, out);
            opts.version = image_version;
            opts.kernel_version = kernel_version;
            if no_ipvsadm {
                opts.ipvsadm = None;
            }
            opts.extra_modules = modules;
            opts.cmdline = cmdline;
            let built = build_image(&opts)?;
            println!("{}", built.dir.display());
            eprintln!(
                "image {} (kernel {}, agent {}): initrd {:.1} MiB ({:.1} MiB unpacked), built in {:.1} s",
                built.manifest.version,
                built.manifest.kernel_version,
                built.manifest.agent_version,
                built.initrd_bytes as f64 / 1048576.0,
                built.cpio_bytes as f64 / 1048576.0,
                built.elapsed.as_secs_f64()
            );
            for (f, d) in &built.manifest.files {
                eprintln!("  {f}: sha256 {} ({} bytes)", d.sha256, d.size);
            }
        }
        Command::Verify { dir } => {
            let manifest = Manifest::read(&dir)?;
            manifest.verify(&dir)?;
            println!("{}: image {} verified", dir.display(), manifest.version);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
