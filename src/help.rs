//! A check every binary's tests run on its command line: each flag and argument of each
//! subcommand says what it does, so `--help` never lists a bare flag.

/// The flags and arguments of `command` and of its subcommands, at any depth, that have no help
/// text, as `subcommand path: --flag`.
pub fn undocumented(command: &clap::Command) -> Vec<String> {
    let mut missing = Vec::new();
    collect(command, command.get_name(), &mut missing);
    missing
}

fn collect(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
    for arg in command.get_arguments() {
        let generated = matches!(arg.get_id().as_str(), "help" | "version");
        let documented = arg
            .get_help()
            .or(arg.get_long_help())
            .is_some_and(|h| !h.to_string().trim().is_empty());
        if !generated && !documented {
            let name = arg
                .get_long()
                .map_or_else(|| arg.get_id().to_string(), |l| format!("--{l}"));
            missing.push(format!("{path}: {name}"));
        }
    }
    for sub in command.get_subcommands() {
        collect(sub, &format!("{path} {}", sub.get_name()), missing);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_flag_is_found_at_any_depth() {
        let command = clap::Command::new("tool")
            .arg(clap::Arg::new("ok").long("ok").help("Does a thing"))
            .subcommand(
                clap::Command::new("run")
                    .arg(clap::Arg::new("bare").long("bare"))
                    .arg(clap::Arg::new("file").help("The file")),
            );
        assert_eq!(undocumented(&command), vec!["tool run: --bare"]);
    }
}
