//! The `lossgate` binary; the command line lives in the library (`cli`).

fn main() {
    lossgate::cli::main();
}
