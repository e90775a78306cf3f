//! What a user types: the `keel` program's command line (Cloud Hypervisor-style option lists:
//! `--disk path=/img,readonly=on`), turned into a VM config. Any words must give a config or an
//! error naming the flag, never a panic.

/// Splits the input into words (on NUL, space and newline) and parses them as `keel`'s flags.
pub fn keel_flags(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let words: Vec<&str> = text
        .split(['\0', ' ', '\n'])
        .filter(|word| !word.is_empty())
        .take(64)
        .collect();
    // A config file would be read from the file system: out of scope here (vm_config covers
    // its contents).
    if words.iter().any(|word| word.starts_with("--config")) {
        return;
    }
    let argv = std::iter::once("keel").chain(words.iter().copied());
    let Ok(cli) = <keel::cli::Cli as clap::Parser>::try_parse_from(argv) else {
        return;
    };
    match keel::cli::vm_config(&cli.vmm) {
        Ok(Some(vm)) => {
            let _ = vm.config.validate();
        }
        Ok(None) => {}
        Err(err) => assert!(!err.to_string().is_empty()),
    }
}
