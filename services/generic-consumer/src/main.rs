//! generic-consumer's entry point; the program is [`generic_consumer::app::main`].

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    generic_consumer::app::main()
}
