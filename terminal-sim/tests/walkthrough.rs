//! The README's walkthrough, run as a new user pastes it: every shell block
//! marked `<!-- walkthrough -->` in README.md, in order, in one bash, in an
//! empty directory standing for a fresh clone. The binaries are the ones
//! cargo built for this test (`target/release/` in that directory links to
//! them, and the README's `cargo build` is checked, not run); the daemons
//! listen on free ports instead of 7700 and 7701. Every command must exit
//! as the README says: 0, or the code its comment names ("exit code 2").
//! So the README cannot drift from the code.
mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{cardd_bin, sim_bin};

/// How long the whole walkthrough may take (it runs a daemon, a TLS
/// daemon and a two-second bench).
const LIMIT: Duration = Duration::from_secs(600);
/// The one build command the README may give.
const BUILD: &str = "cargo build --release --workspace";

/// One command of the walkthrough and the exit code it must give.
#[derive(Debug, PartialEq)]
struct Step {
    text: String,
    expect: i32,
}

/// The shell blocks marked `<!-- walkthrough -->`, in order.
fn blocks(readme: &str) -> Vec<Vec<&str>> {
    let mut out = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "<!-- walkthrough -->" {
            continue;
        }
        assert_eq!(
            lines.next(),
            Some("```sh"),
            "a marked block is a ```sh fence"
        );
        out.push(lines.by_ref().take_while(|l| *l != "```").collect());
    }
    out
}

/// The commands of a block: continued lines joined, a heredoc kept whole
/// with its command, comments and blank lines dropped.
fn steps(block: &[&str]) -> Vec<Step> {
    let mut out = Vec::new();
    let mut lines = block.iter();
    while let Some(first) = lines.next() {
        if first.trim().is_empty() || first.trim_start().starts_with('#') {
            continue;
        }
        let mut text = first.to_string();
        while text.ends_with('\\') {
            text.push('\n');
            text.push_str(lines.next().expect("a continued line goes on"));
        }
        if let Some(tag) = text.split("<<'").nth(1).and_then(|t| t.split('\'').next()) {
            let tag = tag.to_string();
            for l in lines.by_ref() {
                text.push('\n');
                text.push_str(l);
                if *l == tag {
                    break;
                }
            }
        }
        let expect = text
            .split("exit code ")
            .nth(1)
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .map_or(0, |n| n.parse().expect("an exit code"));
        out.push(Step { text, expect });
    }
    out
}

/// A port nobody listens on a moment ago.
fn free_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("127.0.0.1:{}", l.local_addr().expect("addr").port())
}

/// The walkthrough as one bash script that stops at the first command whose
/// exit code is not the README's (a pipeline's too: every command in it
/// must succeed), and kills the daemons it started.
fn script(steps: &[Step], ports: &[(&str, String)]) -> String {
    // pipefail: `cardd audit verify ... | head -5` must exit 0 itself.
    let mut s = "set -o pipefail\n\
         trap 'kill $(jobs -p) 2>/dev/null' EXIT\n\
         cargo() { [ \"cargo $*\" = \"BUILD\" ] || { echo \"unexpected: cargo $*\" >&2; return 1; }; }\n\
         step() { [ \"$1\" = \"$2\" ] || { printf 'exit code %s, not %s, from:\\n%s\\n' \"$1\" \"$2\" \"$3\" >&2; exit 1; }; }\n"
        .replace("BUILD", BUILD);
    for step in steps {
        let mut text = step.text.clone();
        for (from, to) in ports {
            text = text.replace(from, to);
        }
        let quoted = text.replace('\'', "'\\''");
        s.push_str(&format!("{text}\nstep $? {} '{quoted}'\n", step.expect));
    }
    s
}

/// Links `target/release/NAME` in `dir` to the binary cargo built.
fn link_binary(dir: &Path, name: &str, built: &Path) {
    let release = dir.join("target/release");
    std::fs::create_dir_all(&release).expect("target/release");
    std::os::unix::fs::symlink(built, release.join(name)).expect("symlink");
}

#[test]
fn the_readme_walkthrough_runs_as_pasted() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let blocks = blocks(&readme);
    assert!(
        blocks.len() >= 8,
        "the walkthrough's blocks: {}",
        blocks.len()
    );
    let steps: Vec<Step> = blocks.iter().flat_map(|b| steps(b)).collect();
    assert!(
        steps.iter().any(|s| s.text == BUILD),
        "the walkthrough builds with `{BUILD}`"
    );
    let clone = tempfile::tempdir().expect("tempdir");
    link_binary(clone.path(), "cardd", &cardd_bin());
    link_binary(clone.path(), "terminal-sim", &sim_bin());
    let ports = [
        ("127.0.0.1:7700", free_port()),
        ("127.0.0.1:7701", free_port()),
    ];
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script(&steps, &ports))
        .current_dir(clone.path())
        .env("HOME", clone.path())
        .env("XDG_STATE_HOME", clone.path().join(".state"))
        .env_remove("CARDD_CONNECT")
        .env_remove("TERMINAL_SIM_STATE_DIR");
    let out = common::run::run_bounded(&mut cmd, LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the walkthrough failed:\n{stderr}\n--- stdout ---\n{stdout}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // What the walkthrough promises a reader sees.
    for seen in [
        "Cashier                              ann",
        "Status                           BLOCKED",
        "Status                          REPLACED",
        "INSUFFICIENT_FUNDS",
        "--partial",
        "BALANCED",
        "this port speaks TLS",
        "consistent: the tree of size",
    ] {
        assert!(
            stdout.contains(seen) || stderr.contains(seen),
            "the walkthrough never showed {seen:?}:\n{stdout}\n{stderr}"
        );
    }
    // The till kept its state in its own directory, not beside its key.
    let state = clone.path().join(".state/cardd-terminal-sim");
    assert!(state.is_dir(), "no state directory {}", state.display());
    let beside_key = clone
        .path()
        .join("cardd-data/demo/terminal-1.key.state.json");
    assert!(!beside_key.exists(), "a state file beside the key");
}

#[test]
fn steps_join_lines_keep_heredocs_and_read_exit_codes() {
    let block = [
        "# a comment",
        "a --x \\",
        "    --y",
        "cat > f <<'EOF'",
        "{\"k\": 1}",
        "EOF",
        "",
        "b   # refused: CODE (exit code 2)",
    ];
    assert_eq!(
        steps(&block),
        [
            Step {
                text: "a --x \\\n    --y".into(),
                expect: 0
            },
            Step {
                text: "cat > f <<'EOF'\n{\"k\": 1}\nEOF".into(),
                expect: 0
            },
            Step {
                text: "b   # refused: CODE (exit code 2)".into(),
                expect: 2
            },
        ]
    );
}
