fn main() -> std::process::ExitCode {
    merpati::cli::main()
}
