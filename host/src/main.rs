// Every event allocates a little on its way through (entry fields, the
// decoded envelope, keys for acks): mimalloc takes that better than glibc's
// malloc, which a profile of the Redis path showed at about 17% of the time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    runnel::cli::main()
}
