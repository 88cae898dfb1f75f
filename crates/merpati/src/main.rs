// mimalloc rather than glibc's malloc: see `memory.rs` for why.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    merpati::cli::main()
}
