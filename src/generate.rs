//! `walrelay generate`: man pages (clap_mangen) and shell completions (clap_complete) made
//! from walrelay's own command line, so they never drift from `--help`.
//!
//! Owns: the files written under the directory given to `generate man` and the completion
//! script printed by `generate completions`. Must not: know walrelay's options itself (it
//! gets the `clap::Command` from main.rs).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use clap_complete::Shell;

/// `walrelay generate` (hidden: a packaging helper).
#[derive(Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: Generate,
}

#[derive(Subcommand)]
pub enum Generate {
    /// Write walrelay.1 and one page per subcommand (walrelay-run.1, ...) into DIR.
    Man {
        /// Output directory (created if missing), e.g. /usr/share/man/man1.
        dir: PathBuf,
    },
    /// Print the completion script for SHELL on standard output.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: Shell,
    },
}

/// Runs `walrelay generate` for the command line `cmd` (main.rs's `Cli::command()`).
pub fn main(args: &GenerateArgs, cmd: clap::Command) -> Result<(), String> {
    match &args.what {
        Generate::Man { dir } => {
            let pages = man_pages(cmd, dir)?;
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for p in pages {
                writeln!(out, "{}", p.display())
                    .map_err(|e| format!("could not write to standard output: {e}"))?;
            }
            Ok(())
        }
        Generate::Completions { shell } => {
            use std::io::Write;
            let mut cmd = cmd;
            let name = cmd.get_name().to_string();
            // Into memory first: clap_complete panics when its writer fails (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, name, &mut script);
            let mut out = std::io::stdout().lock();
            out.write_all(&script)
                .and_then(|()| out.flush())
                .map_err(|e| format!("could not write the completion script: {e}"))
        }
    }
}

/// Writes the man pages of `cmd` and its visible subcommands into `dir`; their paths.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("could not create directory \"{}\": {e}", dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    write_pages(&cmd, dir, &mut out)?;
    Ok(out)
}

fn write_pages(cmd: &clap::Command, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let page = clap_mangen::Man::new(cmd.clone())
        .source(format!("walrelay {}", env!("CARGO_PKG_VERSION")))
        .manual("walrelay manual");
    let path = dir.join(page.get_filename());
    let mut roff = Vec::new();
    page.render(&mut roff)
        .map_err(|e| format!("could not render {}: {e}", path.display()))?;
    std::fs::write(&path, ascii_roff(&String::from_utf8_lossy(&roff)))
        .map_err(|e| format!("could not write \"{}\": {e}", path.display()))?;
    out.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, out)?;
    }
    Ok(())
}

/// Non-ASCII characters (e.g. an em dash in a help text) as groff's `\[uXXXX]` escapes, so
/// the page needs no preconv(1) and renders the same with any troff.
fn ascii_roff(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            s.push(c);
        } else {
            s.push_str(&format!("\\[u{:04X}]", u32::from(c)));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn ascii_roff_escapes() {
        assert_eq!(
            super::ascii_roff("a\u{2014}b \u{e9}"),
            "a\\[u2014]b \\[u00E9]"
        );
    }
}
