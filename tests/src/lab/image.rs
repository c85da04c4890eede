//! The balancer image the fleet site boots.
//!
//! TODO(issue-14a): until `lbfleet-images` (`make image`, target/images/<version>/) lands on main, this
//! builds an interim image with the guest harness: Debian's kernel, an initramfs with busybox, the ip_vs and
//! virtio-net modules, and the agent, whose script brings up the `BOOTIF` NIC by DHCP and runs
//! `lbfleet-agent run` (it reads `lbfleet.server=`/`lbfleet.token=` from the kernel command line) under a
//! restart loop. Replace it with the image `make image` builds once that is on main.

use std::path::{Path, PathBuf};

use crate::guest::{self, Initramfs};

use super::{io_err, LabError};

const AGENT_SCRIPT: &str = r#"
export RUST_LOG=info
echo 1 > /proc/sys/net/ipv4/ip_forward
mac=$(sed -n 's/.*BOOTIF=01-\([0-9a-fA-F-]*\).*/\1/p' /proc/cmdline | tr - : | tr A-F a-f)
nic=
for d in /sys/class/net/*; do
  [ "$(cat $d/address)" = "$mac" ] && nic=${d##*/}
  ip link set ${d##*/} up
done
# The boot script names the NIC by BOOTIF once issue 14a's kernel arguments land; the first NIC until then.
[ -n "$nic" ] || nic=eth0
echo "lbfleet-image: boot NIC $nic ($mac)"
cat > /tmp/udhcpc.sh <<'SCRIPT'
#!/bin/sh
case "$1" in
  bound|renew)
    ifconfig "$interface" "$ip" netmask "$subnet"
    [ -n "$router" ] && ip route replace default via "$router" dev "$interface"
    echo "lbfleet-image: $interface $ip/$subnet" ;;
esac
SCRIPT
chmod +x /tmp/udhcpc.sh
until udhcpc -i "$nic" -s /tmp/udhcpc.sh -q -t 5 -T 2; do echo "lbfleet-image: DHCP retry"; done
while true; do
  lbfleet-agent run
  echo "lbfleet-image: agent exited rc=$?; restarting"
  sleep 1
done
"#;

/// Builds the interim image into `out` (`vmlinuz`, `initrd.img`) with the agent built in the same profile as
/// the running binary, and returns `out`.
pub fn interim_agent_image(out: &Path) -> Result<PathBuf, LabError> {
    let harness = |e: guest::HarnessError| LabError::Other(e.to_string());
    let prereqs = guest::prereqs().map_err(harness)?;
    let agent = guest::workspace_binary("lbfleet-agent", "lbfleet-agent").map_err(harness)?;
    let mut img =
        Initramfs::with_modules(&prereqs, &["virtio_pci", "virtio_net"]).map_err(harness)?;
    img.binary(&agent, "/usr/bin/lbfleet-agent")
        .map_err(harness)?;
    img.script(AGENT_SCRIPT);
    let (initrd, _scratch) = img.write().map_err(harness)?;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    std::fs::copy(&prereqs.kernel, out.join("vmlinuz")).map_err(io_err(&prereqs.kernel))?;
    std::fs::copy(&initrd, out.join("initrd.img")).map_err(io_err(&initrd))?;
    Ok(out.to_owned())
}
