//! What packagers install beside the binary, generated from the clap command so it never
//! drifts from it: shell completions (`fleetgate completions bash|zsh|fish|elvish|powershell`)
//! and the man page (`fleetgate manpage`, roff on stdout).

use std::io::Write;
use std::process::ExitCode;

/// Print `shell`'s completion script for `command` to stdout.
pub fn completions(shell: clap_complete::Shell, mut command: clap::Command) -> ExitCode {
    let name = command.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut out);
    print(&out)
}

/// Print `command`'s man page (section 1, every subcommand included) to stdout.
pub fn manpage(command: clap::Command) -> ExitCode {
    let mut out = Vec::new();
    let page = clap_mangen::Man::new(command.clone());
    if let Err(e) = page.render(&mut out) {
        eprintln!("error: cannot render the man page: {e}");
        return ExitCode::from(1);
    }
    // clap_mangen renders the top level and lists the subcommands; add each one's options.
    for sub in command.get_subcommands() {
        let title = format!(".SH \"{} {}\"\n", command.get_name(), sub.get_name()).to_uppercase();
        out.extend_from_slice(title.as_bytes());
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            out.extend_from_slice(format!("{about}\n").as_bytes());
        }
        let mut options = Vec::new();
        if clap_mangen::Man::new(sub.clone())
            .render_options_section(&mut options)
            .is_ok()
        {
            out.extend_from_slice(&options);
        }
    }
    print(&out)
}

fn print(bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is not worth a message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
