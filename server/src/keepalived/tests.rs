//! Parser tests, one per feature of keepalived's configuration language, and mapping tests against small
//! configurations written the way keepalived's own samples are.

use std::path::Path;

use super::parser::{parse, Config, Limits, ParseError, Statement};
use super::source::{expand_braces, matches, MemorySource};

fn read(src: &mut MemorySource, id: &str) -> Config {
    parse(src, Path::new("/etc/keepalived/keepalived.conf"), id, Limits::default()).expect("parses")
}

fn one(text: &str, id: &str) -> Config {
    read(
        &mut MemorySource::new().with("/etc/keepalived/keepalived.conf", text),
        id,
    )
}

/// Every statement as `file:line words...`, depth-first, blocks indented by two spaces per level.
fn flat(c: &Config) -> Vec<String> {
    fn walk(s: &[Statement], depth: usize, out: &mut Vec<String>) {
        for st in s {
            let file = st.loc.file.rsplit('/').next().unwrap_or("");
            out.push(format!(
                "{}{}:{} {}",
                "  ".repeat(depth),
                file,
                st.loc.line,
                st.words.join(" ")
            ));
            walk(st.children(), depth + 1, out);
        }
    }
    let mut out = Vec::new();
    walk(&c.statements, 0, &mut out);
    out
}

#[test]
fn blocks_comments_and_locations() {
    let c = one(
        "! Configuration File\nglobal_defs {\n   router_id LVS_DEVEL # here\n}\n\nvirtual_server 198.18.0.10 80\n{\n  delay_loop 6\n  real_server 198.18.2.1 80 { weight 1 }\n}\n",
        "lb1",
    );
    assert_eq!(
        flat(&c),
        [
            "keepalived.conf:2 global_defs",
            "  keepalived.conf:3 router_id LVS_DEVEL",
            "keepalived.conf:6 virtual_server 198.18.0.10 80",
            "  keepalived.conf:8 delay_loop 6",
            "  keepalived.conf:9 real_server 198.18.2.1 80",
            "    keepalived.conf:9 weight 1",
        ]
    );
    assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
}

#[test]
fn unbalanced_braces_are_reported_not_fatal() {
    let c = one("}\na {\n b\n", "x");
    assert_eq!(flat(&c), ["keepalived.conf:2 a", "  keepalived.conf:3 b"]);
    let msgs: Vec<String> = c.diagnostics.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        msgs,
        [
            "/etc/keepalived/keepalived.conf:1: '}' without a block to close (ignored)",
            "/etc/keepalived/keepalived.conf:2: block 'a' is not closed",
        ]
    );
}

#[test]
fn includes_glob_relative_to_the_including_file() {
    let mut src = MemorySource::new()
        .with(
            "/etc/keepalived/keepalived.conf",
            "include conf.d/*.conf\ninclude /srv/{a,b}.conf\ninclude missing/*.conf\n",
        )
        .with("/etc/keepalived/conf.d/20-b.conf", "b 1\ninclude ../inc/x.conf\n")
        .with("/etc/keepalived/conf.d/10-a.conf", "a 1\n")
        .with("/etc/keepalived/conf.d/skip.txt", "no 1\n")
        .with("/etc/keepalived/inc/x.conf", "x 1\n")
        .with("/srv/a.conf", "sa 1\n")
        .with("/srv/b.conf", "sb 1\n");
    let c = read(&mut src, "lb1");
    assert_eq!(
        flat(&c),
        [
            "10-a.conf:1 a 1",
            "20-b.conf:1 b 1",
            "x.conf:1 x 1",
            "a.conf:1 sa 1",
            "b.conf:1 sb 1",
        ]
    );
    assert_eq!(c.diagnostics.len(), 1);
    assert!(c.diagnostics[0].message.contains("matched no file"));
    assert_eq!(c.diagnostics[0].loc.line, 3);
}

#[test]
fn a_block_may_span_an_include() {
    let mut src = MemorySource::new()
        .with("/etc/keepalived/keepalived.conf", "virtual_server 198.18.0.10 80 {\ninclude rs.conf\n}\n")
        .with("/etc/keepalived/rs.conf", "real_server 198.18.2.1 80 {\n}\n");
    assert_eq!(
        flat(&read(&mut src, "x")),
        [
            "keepalived.conf:1 virtual_server 198.18.0.10 80",
            "  rs.conf:1 real_server 198.18.2.1 80"
        ]
    );
}

#[test]
fn include_loops_are_cut_and_reported() {
    let mut src = MemorySource::new()
        .with("/etc/keepalived/keepalived.conf", "a 1\ninclude keepalived.conf\ninclude b.conf\n")
        .with("/etc/keepalived/b.conf", "b 1\ninclude keepalived.conf\n");
    let c = read(&mut src, "x");
    assert_eq!(flat(&c), ["keepalived.conf:1 a 1", "b.conf:1 b 1"]);
    assert_eq!(c.diagnostics.len(), 2, "{:?}", c.diagnostics);
    assert!(c.diagnostics.iter().all(|d| d.message.contains("include loop")));
}

#[test]
fn conditional_lines_follow_the_config_id() {
    let text = "global_defs {\n @main router_id main_router\n @backup router_id backup_router\n}\nunicast_peer {\n @^main 1.2.3.4\n @^backup 1.2.3.5\n @^backup2 1.2.3.6\n}\n";
    let words = |id: &str| -> Vec<String> {
        flat(&one(text, id))
            .into_iter()
            .map(|l| l.trim_start().split_once(' ').map(|x| x.1.to_owned()).unwrap_or_default())
            .collect()
    };
    // The man page's example: main gets router_id main_router and peers .5 and .6.
    assert_eq!(
        words("main"),
        ["global_defs", "router_id main_router", "unicast_peer", "1.2.3.5", "1.2.3.6"]
    );
    assert_eq!(
        words("backup"),
        ["global_defs", "router_id backup_router", "unicast_peer", "1.2.3.4", "1.2.3.6"]
    );
    assert_eq!(
        words("other"),
        ["global_defs", "unicast_peer", "1.2.3.4", "1.2.3.5", "1.2.3.6"]
    );
}

#[test]
fn parameters_substitute_recursively_at_use_time() {
    let c = one(
        "$ADDRESS_BASE=10.2.${ADDRESS_BASE_SUB}\n$ADDRESS_BASE_SUB=0\nvip ${ADDRESS_BASE}.100/32\n$ADDRESS_BASE_SUB=10\nvip ${ADDRESS_BASE}.100/32\nkeep ${UNDEFINED} $UNDEFINED2 cost$5\n@main $PRIORITY=240\n@backup $PRIORITY=200\npriority $PRIORITY\n$IF_MAIN=@main\n$IF_MAIN weight 3\nx ${_HASH}${_BANG} ${_INSTANCE} ${_PWD}\n",
        "main",
    );
    assert_eq!(
        flat(&c),
        [
            "keepalived.conf:3 vip 10.2.0.100/32",
            "keepalived.conf:5 vip 10.2.10.100/32",
            "keepalived.conf:6 keep ${UNDEFINED} $UNDEFINED2 cost$5",
            "keepalived.conf:9 priority 240",
            "keepalived.conf:11 weight 3",
            "keepalived.conf:12 x #! main /etc/keepalived",
        ]
    );
    let backup = one("@main $P=240\n@backup $P=200\npriority $P\n$IF=@main\n$IF weight 3\n", "backup");
    assert_eq!(flat(&backup), ["keepalived.conf:3 priority 200"]);
}

#[test]
fn multi_line_parameters_expand_to_lines_and_nest() {
    let c = one(
        "$RS= \\\n  real_server 198.18.${VS}.${RS_NUM} 80 { \\\n    weight ${RS_NUM} \\\n  }\n$VS_BLOCK= \\\nvirtual_server 198.18.0.${VS} 80 { \\\n  $RS_NUM=1 \\\n  $RS \\\n  $RS_NUM=2 \\\n  $RS \\\n}\n$VS=1\n$VS_BLOCK\n$VS=2\n$VS_BLOCK\n",
        "x",
    );
    assert_eq!(
        flat(&c),
        [
            "keepalived.conf:6 virtual_server 198.18.0.1 80",
            "  keepalived.conf:2 real_server 198.18.1.1 80",
            "    keepalived.conf:3 weight 1",
            "  keepalived.conf:2 real_server 198.18.1.2 80",
            "    keepalived.conf:3 weight 2",
            "keepalived.conf:6 virtual_server 198.18.0.2 80",
            "  keepalived.conf:2 real_server 198.18.2.1 80",
            "    keepalived.conf:3 weight 1",
            "  keepalived.conf:2 real_server 198.18.2.2 80",
            "    keepalived.conf:3 weight 2",
        ]
    );
}

#[test]
fn seq_and_lst_repeat_the_rest_of_the_line() {
    let c = one(
        "~SEQ(SUBNET, 0, 3) ip_address 10.0.${SUBNET}.1\n~SEQx(S, 0x90, 0x10, 0xc0) a fe80::${S}:1\n~SEQ(N, 3) n ${N}\n~SEQ(D, 2, 1) d ${D}\n~LST({IP, IP1}, {10,1},{20,4}) 192.168.${IP}.${IP1}\n~LST(A, 1, 2) ~LST(B, 5,6) p ${A}.${B}\n",
        "x",
    );
    let words: Vec<String> = flat(&c)
        .into_iter()
        .map(|l| l.trim_start().split_once(' ').map(|x| x.1.to_owned()).unwrap_or_default())
        .collect();
    assert_eq!(
        words,
        [
            "ip_address 10.0.0.1",
            "ip_address 10.0.1.1",
            "ip_address 10.0.2.1",
            "ip_address 10.0.3.1",
            "a fe80::90:1",
            "a fe80::a0:1",
            "a fe80::b0:1",
            "a fe80::c0:1",
            "n 1",
            "n 2",
            "n 3",
            "d 2",
            "d 1",
            "192.168.10.1",
            "192.168.20.4",
            "p 1.5",
            "p 1.6",
            "p 2.5",
            "p 2.6",
        ]
    );
    for bad in ["~SEQ(X, 1, 0, 5) a", "~LST({A, B}, {1}) a", "~SEQ(X, 1 a"] {
        let r = parse(
            &mut MemorySource::new().with("/k.conf", bad),
            Path::new("/k.conf"),
            "x",
            Limits::default(),
        );
        assert!(matches!(r, Err(ParseError::Limit { .. })), "{bad}: {r:?}");
    }
}

#[test]
fn runaway_expansion_is_an_error_not_a_hang() {
    let small = Limits {
        lines: 1000,
        ..Limits::default()
    };
    for text in [
        "$A=x${A}\nv ${A}\n",
        "$A= \\\n$A\n$A\n",
        "~SEQ(I, 1, 100000) ~SEQ(J, 1, 100000) ~SEQ(K, 1, 100000) @never x\n",
        "~SEQ(I, 1, 100000) v $I\n",
    ] {
        let r = parse(
            &mut MemorySource::new().with("/k.conf", text),
            Path::new("/k.conf"),
            "x",
            small,
        );
        assert!(matches!(r, Err(ParseError::Limit { .. })), "{text:?}: {r:?}");
    }
    let r = parse(
        &mut MemorySource::new().with("/k.conf", "a 1\n"),
        Path::new("/nope.conf"),
        "x",
        small,
    );
    assert!(matches!(r, Err(ParseError::Read(_))), "{r:?}");
}

#[test]
fn globs_and_braces() {
    assert!(matches("*.conf", "a.conf"));
    assert!(!matches("*.conf", "a.conf.bak"));
    assert!(matches("[0-9][!x]?.c*", "12z.conf"));
    assert!(!matches("[0-9]*", "a1"));
    assert!(matches("a\\*", "a*"));
    assert_eq!(
        expand_braces("{foo/{,cat,dog},bar}", 100).expect("expands"),
        ["foo/", "foo/cat", "foo/dog", "bar"]
    );
    assert!(expand_braces("{a,b}{a,b}{a,b}{a,b}", 8).is_err());
}
