//! keepalived.conf parser and import planner: any bytes, split at NUL into a main file and up to seven files
//! it may include (`a.conf` ... `g.conf`, also by glob), parse with small limits and plan: never a panic,
//! include loops and self-referencing parameters end in an error within the limits, every statement's line
//! lies inside its file, and every planned cluster passes the fleet's validation.
#![no_main]

use std::path::Path;

use lbfleet_server::fleet::rules;
use lbfleet_server::keepalived::{parse, plan, Limits, Machine, MemorySource, Statement};
use libfuzzer_sys::fuzz_target;

fn check_lines(s: &[Statement], lines_of: &dyn Fn(&str) -> usize) {
    for st in s {
        assert!(st.loc.line >= 1 && st.loc.line as usize <= lines_of(&st.loc.file));
        check_lines(st.children(), lines_of);
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut src = MemorySource::new();
    let mut files = Vec::new();
    for (i, part) in text.split('\0').take(8).enumerate() {
        let name = if i == 0 {
            "/k/keepalived.conf".to_owned()
        } else {
            format!("/k/{}.conf", (b'a' + i as u8 - 1) as char)
        };
        src.insert(&name, part);
        files.push((name, part.lines().count()));
    }
    let limits = Limits {
        include_depth: 8,
        files: 64,
        lines: 20_000,
        line_bytes: 16 * 1024,
        expansion_depth: 16,
        total_bytes: 4 * 1024 * 1024,
    };
    let mut machines = Vec::new();
    for id in ["lb1", "lb2"] {
        if let Ok(config) = parse(&mut src, Path::new("/k/keepalived.conf"), id, limits) {
            let lines_of = |f: &str| {
                files
                    .iter()
                    .find(|(n, _)| n == f)
                    .map(|(_, c)| *c)
                    .unwrap_or(0)
            };
            check_lines(&config.statements, &lines_of);
            machines.push(Machine {
                node: id.to_owned(),
                config,
            });
        }
    }
    let p = plan(&machines);
    for c in &p.clusters {
        assert!(rules::cluster_spec(&c.spec).is_ok());
    }
});
