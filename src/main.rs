//! The `imcrypt` command: parses arguments and hands over to the library.

fn main() -> std::process::ExitCode {
    imcrypt::cli::main()
}
