//! Kernel modules for an image: resolves names to module files and their dependencies from the installed
//! kernel's `modules.dep`, in load order (dependencies first).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::ImageError;

/// NIC drivers an image carries where the kernel has them as modules (QEMU's virtio and e1000, Intel's
/// server NICs, Mellanox ConnectX).
pub const NIC_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "mlx5_core",
];

/// The ip_vs core and every scheduler module. `crc32c_generic` comes first: libcrc32c (under nf_conntrack)
/// only names it as a soft dependency, which modules.dep does not list, and fails to load without it.
pub const IPVS_MODULES: &[&str] = &[
    "crc32c_generic",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_lblc",
    "ip_vs_lblcr",
    "ip_vs_dh",
    "ip_vs_sh",
    "ip_vs_sed",
    "ip_vs_nq",
    "ip_vs_fo",
    "ip_vs_ovf",
    "ip_vs_mh",
];

/// The rest of a balancer's kernel: connection tracking, IP-in-IP (IPVS tunnel forwarding), packet sockets
/// (DHCP) where modular, veth (namespaced tests inside a node), 802.1Q (the VLAN interfaces a role asks for).
pub const BALANCER_MODULES: &[&str] = &["nf_conntrack", "ipip", "af_packet", "veth", "8021q"];

/// A kernel's module index: `modules.dep` and `modules.builtin` under `<root>/<version>/`.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// module file (relative) -> its dependencies (relative)
    deps: BTreeMap<String, Vec<String>>,
    /// name with `_` (`ip_vs_rr`) -> module file
    by_name: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
}

fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let stem = base
        .strip_suffix(".ko")
        .or_else(|| base.strip_suffix(".ko.xz"))
        .or_else(|| base.strip_suffix(".ko.zst"))
        .or_else(|| base.strip_suffix(".ko.gz"))
        .unwrap_or(base);
    stem.replace('-', "_")
}

impl ModuleIndex {
    /// Reads `<modules_root>/<kernel_version>/modules.dep` (and `modules.builtin` if present).
    pub fn load(modules_root: &Path, kernel_version: &str) -> Result<ModuleIndex, ImageError> {
        let dir = modules_root.join(kernel_version);
        let dep_path = dir.join("modules.dep");
        let text = std::fs::read_to_string(&dep_path).map_err(ImageError::io(&dep_path))?;
        let mut deps = BTreeMap::new();
        let mut by_name = BTreeMap::new();
        for line in text.lines() {
            let Some((module, rest)) = line.split_once(':') else {
                continue;
            };
            by_name.insert(module_name(module), module.to_owned());
            deps.insert(
                module.to_owned(),
                rest.split_whitespace().map(str::to_owned).collect(),
            );
        }
        let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
            .map(|t| t.lines().map(module_name).collect())
            .unwrap_or_default();
        Ok(ModuleIndex {
            dir,
            deps,
            by_name,
            builtin,
        })
    }

    /// `<modules_root>/<kernel_version>`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&name.replace('-', "_"))
    }

    pub fn has_module(&self, name: &str) -> bool {
        self.by_name.contains_key(&name.replace('-', "_"))
    }

    /// Module files (relative to the module directory) to load for `required` and for those of `optional`
    /// the kernel has as modules, dependencies first, each once. A required name that is neither a module
    /// nor built in is an error; a built-in one needs nothing.
    pub fn load_order(
        &self,
        required: &[&str],
        optional: &[&str],
    ) -> Result<Vec<String>, ImageError> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (name, must) in required
            .iter()
            .map(|n| (n, true))
            .chain(optional.iter().map(|n| (n, false)))
        {
            match self.by_name.get(&name.replace('-', "_")) {
                Some(module) => self.visit(module, &mut seen, &mut out),
                None if self.is_builtin(name) || !must => {}
                None => {
                    return Err(ImageError::Module(format!(
                        "module {name} is neither in {}/modules.dep nor built in",
                        self.dir.display()
                    )))
                }
            }
        }
        Ok(out)
    }

    fn visit(&self, m: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
        if !seen.insert(m.to_owned()) {
            return;
        }
        for d in self.deps.get(m).into_iter().flatten() {
            self.visit(d, seen, out);
        }
        out.push(m.to_owned());
    }

    /// The `modules.dep` lines of `modules` only (for busybox `modprobe` in the image), in file order.
    pub fn dep_subset(&self, modules: &[String]) -> String {
        let wanted: BTreeSet<&String> = modules.iter().collect();
        let mut text = String::new();
        for (m, deps) in &self.deps {
            if wanted.contains(m) {
                text.push_str(m);
                text.push(':');
                for d in deps {
                    text.push(' ');
                    text.push_str(d);
                }
                text.push('\n');
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn index() -> (tempfile::TempDir, ModuleIndex) {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("6.1.0-test");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("modules.dep"),
            "kernel/net/netfilter/ipvs/ip_vs_rr.ko: kernel/net/netfilter/ipvs/ip_vs.ko kernel/net/netfilter/nf_conntrack.ko kernel/lib/libcrc32c.ko\n\
             kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko kernel/lib/libcrc32c.ko\n\
             kernel/net/netfilter/nf_conntrack.ko: kernel/lib/libcrc32c.ko\n\
             kernel/lib/libcrc32c.ko:\n\
             kernel/drivers/pci/controller/pci-hyperv-intf.ko:\n\
             kernel/drivers/net/ethernet/mellanox/mlx5/core/mlx5_core.ko: kernel/drivers/pci/controller/pci-hyperv-intf.ko\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("modules.builtin"),
            "kernel/net/packet/af_packet.ko\n",
        )
        .unwrap();
        let idx = ModuleIndex::load(root.path(), "6.1.0-test").unwrap();
        (root, idx)
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let (_root, idx) = index();
        let order = idx.load_order(&["ip_vs_rr", "ip_vs"], &[]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/lib/libcrc32c.ko",
                "kernel/net/netfilter/nf_conntrack.ko",
                "kernel/net/netfilter/ipvs/ip_vs.ko",
                "kernel/net/netfilter/ipvs/ip_vs_rr.ko"
            ]
        );
        // Hyphens in file names match underscores in module names.
        let order = idx.load_order(&[], &["mlx5_core"]).unwrap();
        assert_eq!(order[0], "kernel/drivers/pci/controller/pci-hyperv-intf.ko");
        assert!(idx.has_module("pci_hyperv_intf"));
    }

    #[test]
    fn builtin_and_optional_and_missing() {
        let (_root, idx) = index();
        assert!(idx.load_order(&["af_packet"], &[]).unwrap().is_empty());
        assert!(idx.load_order(&[], &["ixgbe"]).unwrap().is_empty());
        let err = idx.load_order(&["ixgbe"], &[]).unwrap_err();
        assert!(err.to_string().contains("ixgbe"), "{err}");
    }

    #[test]
    fn dep_subset_keeps_only_the_image_modules() {
        let (_root, idx) = index();
        let order = idx.load_order(&["nf_conntrack"], &[]).unwrap();
        assert_eq!(
            idx.dep_subset(&order),
            "kernel/lib/libcrc32c.ko:\nkernel/net/netfilter/nf_conntrack.ko: kernel/lib/libcrc32c.ko\n"
        );
    }
}
