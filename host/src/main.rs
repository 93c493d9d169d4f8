// mimalloc: wasmtime's concurrent call path allocates a few small objects per
// guest call; glibc's malloc/free were ~11% of the server's instructions per
// echoed message (callgrind), mimalloc roughly halves that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(portcullis::cli::main());
}
