fn main() -> std::process::ExitCode {
    runnel::cli::main()
}
