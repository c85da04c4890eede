//! The one rule every privileged test follows when its prerequisites are missing: fail.
//!
//! A test that needs root and network namespaces (`netns`), QEMU and a kernel (`vm`) or Chromium (`browser`)
//! panics with what is missing. Outside CI a developer may opt out of whole tiers with
//! `LBFLEET_SKIP=netns,vm` (or `all`): the test then returns without running and says so on stderr. With
//! `CI=true` the opt-out is refused and the test fails as without it.

use std::fmt::Display;

/// A tier of tests that needs something beyond a plain build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// root, `ip`, network namespaces (and the peers the test names).
    Netns,
    /// QEMU, a kernel with IPVS modules, busybox (and the netns lab for PXE tests).
    Vm,
    /// headless Chromium and chromedriver.
    Browser,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Netns => "netns",
            Tier::Vm => "vm",
            Tier::Browser => "browser",
        }
    }
}

/// Whether `LBFLEET_SKIP` (a comma-separated list of tier names, or `all`) names `tier`.
pub fn opted_out(list: &str, tier: Tier) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "all" || t == tier.name())
}

/// Called when a prerequisite of `tier` is missing: panics (the test fails), unless `LBFLEET_SKIP` opts out
/// of the tier outside CI, in which case it prints why and returns: the caller then returns without running.
pub fn missing(tier: Tier, what: impl Display) {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let skip = std::env::var("LBFLEET_SKIP").unwrap_or_default();
    if opted_out(&skip, tier) && !ci {
        eprintln!(
            "{} test SKIPPED by LBFLEET_SKIP={skip}: {what}",
            tier.name()
        );
        return;
    }
    panic!(
        "{} test cannot run: {what} (scripts/install-deps.sh installs the packages; run as root) (CI={}{})",
        tier.name(),
        if ci { "true" } else { "unset" },
        if ci && !skip.is_empty() {
            ", so LBFLEET_SKIP is ignored"
        } else {
            ""
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_list_names_tiers() {
        assert!(opted_out("netns,vm", Tier::Vm));
        assert!(opted_out(" netns , vm ", Tier::Netns));
        assert!(opted_out("all", Tier::Browser));
        assert!(!opted_out("netns", Tier::Vm));
        assert!(!opted_out("", Tier::Netns));
        assert!(!opted_out("vms", Tier::Vm));
    }
}
